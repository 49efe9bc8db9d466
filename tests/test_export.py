import numpy as np
import pytest
import torch

from fracdet.artifact import ModelArtifact, load_artifact, save_artifact
from fracdet.inference import Predictor, load_model
from fracdet.inference.onnx import OnnxRunner
from fracdet.models import create_model
from fracdet.models.export import _cache_dir, artifact_digest, export_onnx, onnx_bytes
from fracdet.transforms import PreprocessSpec
from synth import write_image


def _artifact(**kw):
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", pretrained=False, head_hidden=32).eval()
    return ModelArtifact(architecture="efficientnet_lite0", state_dict=model.state_dict(),
                         preprocess=PreprocessSpec(input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3),
                         model_config={"head_hidden": 32, "dropout": 0.3}, threshold=0.3, temperature=1.5, **kw)


@pytest.fixture()
def artifact_file(tmp_path):
    return save_artifact(_artifact(), tmp_path / "m.fracdet")


def test_export_matches_pytorch(tmp_path):
    model = create_model("simple_cnn", pretrained=False).eval()
    path = export_onnx(model, 48, tmp_path / "m.onnx")
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        np.testing.assert_allclose(OnnxRunner(path)(x.numpy()), model(x).numpy().reshape(-1), atol=1e-4)


def test_saved_artifact_carries_its_graph_and_backends_agree(artifact_file, tmp_path):
    art = load_artifact(artifact_file)
    assert art.onnx is not None and len(art.sha256) == 64
    imgs = [write_image(tmp_path / "i" / f"{k}.png", k % 2 == 0, k) for k in range(5)]
    onnx = load_model(artifact_file, backend="onnx")
    eager = load_model(artifact_file, backend="torch")
    assert onnx.backend == "onnx" and eager.backend == "torch"
    a = [r.probability for r in onnx.predict_paths(imgs, batch_size=2)]
    b = [r.probability for r in eager.predict_paths(imgs, batch_size=2)]
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert not _cache_dir().exists() or not any(_cache_dir().glob(f"{artifact_digest(art)}*"))  # nothing exported


def test_unsaved_artifact_exports_once_to_a_digest_named_cache(tmp_path):
    art = _artifact()
    Predictor(art, backend="onnx")
    path = _cache_dir() / f"{artifact_digest(art)}.onnx"
    assert path.is_file() and path.parent == _cache_dir()
    mtime = path.stat().st_mtime_ns
    Predictor(_artifact(), backend="onnx")
    assert path.stat().st_mtime_ns == mtime  # exported once, then reused


def test_digest_changes_with_weights(artifact_file):
    art = load_artifact(artifact_file)
    d1 = artifact_digest(art)
    art.state_dict["head.0.weight"] = art.state_dict["head.0.weight"] + 1
    assert artifact_digest(art) != d1


def test_unknown_backend_is_clear(artifact_file):
    from fracdet.errors import FracdetError

    with pytest.raises(FracdetError, match="unknown backend"):
        load_model(artifact_file, backend="tpu")


def test_graph_has_named_outputs_logit_first() -> None:
    """The exported graph gives the logit first and the pooled features by name, both
    matching PyTorch, so later checks (out-of-distribution, maps) read them from one session."""
    torch.manual_seed(0)
    model = create_model("simple_cnn", pretrained=False).eval()
    runner = OnnxRunner(onnx_bytes(model, 64))
    assert runner.output_names[:2] == ["logit", "features"]
    x = torch.rand(3, 3, 64, 64)
    out = runner.run(x.numpy())
    with torch.inference_mode():
        ref = model.graph_outputs(x)
    np.testing.assert_allclose(out["logit"], ref["logit"].numpy(), atol=1e-4)
    np.testing.assert_allclose(out["features"], ref["features"].numpy(), atol=1e-4)
    assert out["features"].shape == (3, model.num_features)
