import os
import subprocess
import sys
import time
from pathlib import Path


from fracdet.runtime import LIB_NAMES, active_allocator, find_tcmalloc, reexec_with_tcmalloc
from optional import missing_optional

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "fractured" / "IMG0000352.jpg"


def _looped_tree(root: Path) -> Path:
    """A library folder whose build tree links back into itself (build/Release/build/...)."""
    release = root / "lib" / "toolchain" / "build" / "Release"
    release.mkdir(parents=True)
    (release / "build").symlink_to(root / "lib" / "toolchain" / "build")
    (root / "lib" / "self").symlink_to(root / "lib")
    return root / "lib"


def test_light_commands_help_and_opt_out_never_reexec(monkeypatch):
    called = []
    monkeypatch.setattr(os, "execve", lambda *a: called.append(a))
    monkeypatch.delenv("FRACDET_ALLOCATOR", raising=False)
    reexec_with_tcmalloc(["--help"])
    reexec_with_tcmalloc(["models"])
    reexec_with_tcmalloc(["predict", "--help"])
    monkeypatch.setenv("FRACDET_ALLOCATOR", "system")
    reexec_with_tcmalloc(["predict", "x.png"])
    assert called == []


def test_finder_never_walks_a_symlink_loop(tmp_path, monkeypatch):
    monkeypatch.delenv("FRACDET_TCMALLOC", raising=False)
    lib = _looped_tree(tmp_path)
    t0 = time.perf_counter()
    assert find_tcmalloc(lib_dirs=[str(lib), str(lib / "toolchain")], ldconfig=False) is None
    assert time.perf_counter() - t0 < 1.0
    # a library placed in a searched folder is found; one deep inside the loop is not looked for
    (lib / "toolchain" / "build" / "Release" / LIB_NAMES[0]).write_bytes(b"")
    assert find_tcmalloc(lib_dirs=[str(lib)], ldconfig=False) is None
    (lib / LIB_NAMES[0]).write_bytes(b"")
    assert find_tcmalloc(lib_dirs=[str(lib)], ldconfig=False) == str(lib / LIB_NAMES[0])


def test_finder_is_bounded_with_the_linker_cache_too(monkeypatch):
    monkeypatch.delenv("FRACDET_TCMALLOC", raising=False)
    t0 = time.perf_counter()
    found = find_tcmalloc()
    assert time.perf_counter() - t0 < 5.0
    assert found is None or Path(found).is_file()


def test_explicit_library_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FRACDET_TCMALLOC", str(tmp_path / "missing.so"))
    assert find_tcmalloc() is None
    (tmp_path / "mine.so").write_bytes(b"")
    monkeypatch.setenv("FRACDET_TCMALLOC", str(tmp_path / "mine.so"))
    assert find_tcmalloc() == str(tmp_path / "mine.so")


def _cli(args, env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FRACDET_ALLOCATOR", "FRACDET_TCMALLOC")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "fracdet", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)


def test_cli_predicts_without_tcmalloc(tmp_path):
    """tcmalloc absent (the variable names a library inside a looped tree that is not there):
    the CLI starts, predicts and writes its CSV under the system allocator."""
    lib = _looped_tree(tmp_path / "sys")
    res = _cli(["predict", str(SAMPLE), "--out", "rows.csv"], {"FRACDET_TCMALLOC": str(lib / LIB_NAMES[0])}, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    text = (tmp_path / "rows.csv").read_text()
    assert "IMG0000352.jpg" in text and "probability" in text.splitlines()[0]
    res = _cli(["info"], {"FRACDET_ALLOCATOR": "system"}, tmp_path)
    assert res.returncode == 0 and "system (glibc malloc)" in res.stdout


def test_heavy_command_runs_under_tcmalloc(monkeypatch, tmp_path):
    monkeypatch.delenv("FRACDET_TCMALLOC", raising=False)
    lib = find_tcmalloc()
    if lib is None:
        missing_optional("tcmalloc (libtcmalloc-minimal4) not installed")
    called = []
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("FRACDET_ALLOCATOR", raising=False)
    monkeypatch.setattr(os, "execve", lambda exe, args, env: called.append((args, env)))
    reexec_with_tcmalloc(["predict", "x.png"])
    (args, env), = called
    assert args[1:4] == ["-m", "fracdet", "predict"] and "tcmalloc" in env["LD_PRELOAD"]
    # and for real: the console path re-executes under the preload, which `info` reports
    res = _cli(["info"], {}, tmp_path)
    assert res.returncode == 0 and "allocator tcmalloc" in res.stdout, res.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", "from fracdet.runtime import active_allocator as a; print(a())"],
                         env={**os.environ, "LD_PRELOAD": lib}, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "tcmalloc"


def test_allocator_is_reported_for_this_process():
    expected = "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "system (glibc malloc)"
    assert active_allocator() == expected
