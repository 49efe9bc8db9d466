import numpy as np
import pytest
import torch

from fracdet.artifact import ModelArtifact, load_artifact, save_artifact
from fracdet.errors import ArtifactError
from fracdet.models import create_model
from fracdet.inference import Predictor
from fracdet.transforms import PreprocessSpec
from synth import write_image


def _artifact(tmp_path, threshold=0.4, temperature=2.0, half=False):
    torch.manual_seed(0)
    model = create_model("simple_cnn", pretrained=False, head_hidden=16, dropout=0.1).eval()
    art = ModelArtifact(
        architecture="simple_cnn", state_dict=model.state_dict(),
        preprocess=PreprocessSpec(input_size=48, mean=(0.5,) * 3, std=(0.25,) * 3),
        model_config={"head_hidden": 16, "dropout": 0.1}, threshold=threshold, temperature=temperature,
        training={"seed": 1}, data={"count": 3},
    )
    path = save_artifact(art, tmp_path / "m.fracdet", half=half)
    return model, art, path


def test_round_trip_float32_is_exact(tmp_path):
    model, art, path = _artifact(tmp_path)
    loaded = load_artifact(path)
    assert loaded.architecture == "simple_cnn" and loaded.threshold == 0.4 and loaded.temperature == 2.0
    assert loaded.preprocess == art.preprocess and loaded.training == {"seed": 1}
    rebuilt = loaded.build_model()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x))


def _member_size(path, name):
    import zipfile

    with zipfile.ZipFile(path) as z:
        return z.getinfo(name).file_size


def test_round_trip_half_is_close_and_smaller(tmp_path):
    model, _, p32 = _artifact(tmp_path)
    _, _, p16 = _artifact(tmp_path / "h", half=True)
    assert _member_size(p16, "weights.npz") < 0.6 * _member_size(p32, "weights.npz")
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(load_artifact(p16).build_model()(x), model(x), atol=2e-2)


def test_no_temp_files_left(tmp_path):
    _artifact(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.fracdet"]


@pytest.mark.parametrize("content", [b"", b"not a model", b"PK\x03\x04garbage"])
def test_bad_artifact_is_clear_error(tmp_path, content):
    bad = tmp_path / "bad.fracdet"
    bad.write_bytes(content)
    with pytest.raises(ArtifactError, match="bad.fracdet"):
        load_artifact(bad)
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "missing.fracdet")


def test_predictor_applies_temperature_and_threshold(tmp_path):
    model, _, path = _artifact(tmp_path)
    pred = Predictor.from_path(path)
    img = write_image(tmp_path / "a.png", True, 3)
    r = pred.predict(img)
    assert r.ok and r.path == str(img)
    assert r.probability == pytest.approx(1 / (1 + np.exp(-r.logit / 2.0)), rel=1e-5)
    assert r.label == ("fractured" if r.probability >= 0.4 else "not fractured")
    # an array in the package convention gives the same answer as the file
    from fracdet.io.images import read_image

    r2 = pred.predict(read_image(img).pixels)
    assert r2.probability == pytest.approx(r.probability, abs=1e-5)


def test_predict_paths_goes_on_past_bad_files(tmp_path):
    _, _, path = _artifact(tmp_path)
    pred = Predictor.from_path(path)
    folder = tmp_path / "imgs"
    for i in range(5):
        write_image(folder / f"ok{i}.png", i % 2 == 0, i)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    rows = list(pred.predict_paths([folder, notes], batch_size=2))
    assert len(rows) == 8
    bad = {r.path.split("/")[-1]: r.error for r in rows if not r.ok}
    assert set(bad) == {"broken.jpg", "empty.png", "notes.txt"}
    assert all(e and "\n" not in e for e in bad.values())
    assert sum(r.ok for r in rows) == 5



def _rewrite(path, out, edit_meta=None, drop=(), replace=None):
    """A copy of a model file with its JSON edited, members dropped or replaced (hashes kept)."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["fracdet.json"])
    if edit_meta:
        edit_meta(meta)
    members["fracdet.json"] = json.dumps(meta).encode()
    members.update(replace or {})
    with zipfile.ZipFile(out, "w") as z:
        for n, data in members.items():
            if n not in drop:
                z.writestr(n, data)
    return out


@pytest.mark.parametrize("edit,reason", [
    (lambda m: m.update(architecture="../../../tmp/evil"), "unknown architecture"),
    (lambda m: m.update(architecture="/abs/path"), "unknown architecture"),
    (lambda m: m.update(kind="ensemble"), "ensemble's architecture"),
    (lambda m: m.update(kind="plugin"), "kind"),
    (lambda m: m.update(threshold=1.7), "threshold"),
    (lambda m: m.update(temperature=-1), "temperature"),
    (lambda m: m.update(temperature="NaN"), "temperature"),
    (lambda m: m["preprocess"].update(input_size=10 ** 9), "preprocess"),
    (lambda m: m["preprocess"].update(std=[0, 0, 0]), "preprocess"),
    (lambda m: m.update(labels=["only one"]), "labels"),
    (lambda m: m.update(metrics=[1, 2]), "metrics"),
    (lambda m: m.update(format_version=99), "newer"),
])
def test_hostile_fields_are_refused_before_use(tmp_path, edit, reason):
    _, _, path = _artifact(tmp_path)
    bad = _rewrite(path, tmp_path / "bad.fracdet", edit)
    with pytest.raises(ArtifactError, match=reason) as err:
        load_artifact(bad)
    assert "bad.fracdet" in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.glob("**/evil*"))


def test_tampered_or_truncated_members_are_refused(tmp_path):
    _, _, path = _artifact(tmp_path)
    graph = _rewrite(path, tmp_path / "g.fracdet", replace={"model.onnx": b"\x08\x07not the graph"})
    with pytest.raises(ArtifactError, match="model.onnx does not match its recorded SHA-256"):
        load_artifact(graph)
    with pytest.raises(ArtifactError, match="weights.npz is missing"):
        load_artifact(_rewrite(path, tmp_path / "w.fracdet", drop=("weights.npz",)))
    with pytest.raises(ArtifactError, match="unexpected members"):
        load_artifact(_rewrite(path, tmp_path / "x.fracdet", replace={"payload.pkl": b"x"}))
    data = path.read_bytes()
    (tmp_path / "t.fracdet").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="t.fracdet"):
        load_artifact(tmp_path / "t.fracdet")


def test_format2_files_still_load(tmp_path):
    model, art, path = _artifact(tmp_path)
    old = {"format": "fracdet-model", "format_version": 2, "architecture": "simple_cnn",
           "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
           "preprocess": art.preprocess.to_dict(), "model_config": art.model_config, "threshold": 0.4,
           "temperature": 2.0, "labels": ["not fractured", "fractured"]}
    torch.save(old, tmp_path / "old.fracdet")
    loaded = load_artifact(tmp_path / "old.fracdet")
    assert loaded.onnx is None and loaded.threshold == 0.4
    r = Predictor(loaded).predict(write_image(tmp_path / "a.png", True, 3))  # exports its graph once
    assert r.ok and loaded.onnx is not None


def test_onnx_prediction_imports_no_torch(tmp_path):
    """The inference layer on its own: a process where `import torch` fails predicts a file."""
    import subprocess
    import sys

    _, _, path = _artifact(tmp_path)
    img = write_image(tmp_path / "a.png", True, 3)
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith(('torch.', 'torchvision', 'lightning', 'timm')):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import fracdet\n"
        f"m = fracdet.load_model({str(path)!r})\n"
        f"r = m.predict({str(img)!r})\n"
        "rows = list(m.predict_paths([" + repr(str(img)) + "]))\n"
        "assert r.ok and rows[0].probability == r.probability, (r, rows)\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok', r.probability, r.verdict)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]


def test_default_model_prediction_leaves_torch_unimported():
    import subprocess
    import sys

    code = ("import sys, fracdet; from pathlib import Path; "
            "m = fracdet.load_model(); r = m.predict(Path('samples/fractured/IMG0000352.jpg')); "
            "assert r.ok and m.backend in ('onnx', 'int8'); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'torchvision', 'timm', 'lightning')))")
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
