import os
import subprocess
import sys
from pathlib import Path

import pytest

from fracdet.runtime import active_allocator, find_tcmalloc, reexec_with_tcmalloc

REPO = Path(__file__).resolve().parents[1]


def test_light_commands_and_opt_out_never_reexec(monkeypatch):
    called = []
    monkeypatch.setattr(os, "execve", lambda *a: called.append(a))
    reexec_with_tcmalloc(["--help"])
    reexec_with_tcmalloc(["models"])
    monkeypatch.setenv("FRACDET_ALLOCATOR", "system")
    reexec_with_tcmalloc(["predict", "x.png"])
    assert called == []


@pytest.mark.skipif(find_tcmalloc() is None, reason="tcmalloc (libtcmalloc-minimal4) not installed")
def test_heavy_command_runs_under_tcmalloc(monkeypatch):
    called = []
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("FRACDET_ALLOCATOR", raising=False)
    monkeypatch.setattr(os, "execve", lambda exe, args, env: called.append((args, env)))
    reexec_with_tcmalloc(["predict", "x.png"])
    (args, env), = called
    assert args[1:4] == ["-m", "fracdet", "predict"] and "tcmalloc" in env["LD_PRELOAD"]
    # and for real: `python -m fracdet info` under the preload reports it
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "LD_PRELOAD": find_tcmalloc()}
    out = subprocess.run([sys.executable, "-c", "from fracdet.runtime import active_allocator as a; print(a())"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "tcmalloc"


def test_allocator_is_reported():
    assert active_allocator() in ("tcmalloc", "system (glibc malloc)")
