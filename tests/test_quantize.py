"""int8 quantization: exported graph, the accept/reject check, artifact round trip, backends, CLI."""

import numpy as np
import onnx
import pytest
import torch

from fracdet.artifact import ModelArtifact, load_artifact, save_artifact
from fracdet.data.layouts import load_dataset
from fracdet.errors import FracdetError
from fracdet.export import freeze_same_padding, onnx_bytes
from fracdet.models import create_model
from fracdet.predict import load_model
from fracdet.quantize import INT8_TOLERANCE, quantize_artifact, within_tolerance
from fracdet.transforms import PreprocessSpec
from synth import make_class_folders

pytest.importorskip("onnxruntime")


def _lite0_artifact(size: int = 64) -> ModelArtifact:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", pretrained=False, head_hidden=32).eval()
    return ModelArtifact(architecture="efficientnet_lite0", state_dict=model.state_dict(),
                         preprocess=PreprocessSpec(input_size=size, mean=(0.5,) * 3, std=(0.5,) * 3),
                         model_config={"head_hidden": 32, "dropout": 0.3}, threshold=0.5, temperature=1.0)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = make_class_folders(tmp_path_factory.mktemp("q") / "data", n_per_class=12)
    return load_dataset(root).samples


def test_freeze_same_padding_keeps_outputs_and_leaves_the_original():
    from timm.layers.conv2d_same import Conv2dSame

    model = _lite0_artifact().build_model()
    frozen = freeze_same_padding(model, 64)
    assert not any(isinstance(m, Conv2dSame) for m in frozen.modules())
    assert any(isinstance(m, Conv2dSame) for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), model(x), atol=1e-5, rtol=1e-5)


def test_exported_graph_has_no_shape_arithmetic():
    graph = onnx.load_from_string(onnx_bytes(_lite0_artifact().build_model(), 64))
    ops = {n.op_type for n in graph.graph.node}
    assert "Shape" not in ops and "Ceil" not in ops and "Conv" in ops


def test_within_tolerance():
    ok = {"n": 10, "mean_abs_diff": 0.01, "p99_abs_diff": 0.05, "auroc_fp32": 0.80, "auroc_int8": 0.795}
    assert within_tolerance(ok)[0]
    bad, why = within_tolerance({**ok, "mean_abs_diff": 0.05})
    assert not bad and "mean_abs_diff" in why
    bad, why = within_tolerance({**ok, "auroc_int8": 0.78})
    assert not bad and "AUROC drop" in why


def test_quantized_artifact_round_trip_and_auto_backend(samples, tmp_path):
    art = _lite0_artifact()
    # a random network scores every image alike, so its AUROC is noise: this test checks the
    # stored graph and the backends; the probability tolerances still apply
    lenient = {**INT8_TOLERANCE, "auroc_drop": 1.0}
    report = quantize_artifact(art, samples[::2], samples[1::2], check_note="odd", calibration_note="even",
                               test=samples[:6], tolerance=lenient)
    assert report["accepted"], report["reason"]
    assert report["check"]["n"] == len(samples[1::2]) and report["test"]["n"] == 6
    assert report["tolerance"] == lenient
    path = save_artifact(art, tmp_path / "q.fracdet")
    loaded = load_artifact(path)
    assert loaded.int8_onnx == art.int8_onnx and loaded.int8["accepted"]
    graph = onnx.load_from_string(loaded.int8_onnx)
    assert any(n.op_type == "QLinearConv" for n in graph.graph.node)  # really int8

    files = [s.path for s in samples[:8]]
    fast, ref = load_model(path), load_model(path, backend="onnx")
    assert fast.backend == "int8" and ref.backend == "onnx"
    a = np.array([r.probability for r in fast.predict_paths(files)])
    b = np.array([r.probability for r in ref.predict_paths(files)])
    assert np.abs(a - b).mean() <= INT8_TOLERANCE["mean_abs_diff"]
    assert not np.array_equal(a, b)  # a different engine, not the float graph again


def test_rejected_int8_is_opt_in_only(samples, tmp_path, caplog):
    art = _lite0_artifact()
    strict = {"mean_abs_diff": -1.0, "p99_abs_diff": 1.0, "auroc_drop": 1.0}
    report = quantize_artifact(art, samples[:8], samples[8:16], check_note="b", calibration_note="a",
                               tolerance=strict)
    assert not report["accepted"] and "rejected" in report["reason"]
    path = save_artifact(art, tmp_path / "r.fracdet")
    loaded = load_artifact(path)
    assert loaded.int8_onnx is not None and not loaded.int8["accepted"]
    assert load_model(path).backend == "onnx"  # auto never picks it
    assert load_model(path, backend="int8").backend == "int8"  # asked for: allowed, with the drift said
    assert "outside the tolerance" in caplog.text


def test_artifact_without_int8_loads(tmp_path):
    path = save_artifact(_lite0_artifact(), tmp_path / "plain.fracdet")
    art = load_artifact(path)
    assert art.int8 == {} and art.int8_onnx is None
    with pytest.raises(FracdetError, match="fracdet quantize"):
        load_model(path, backend="int8")


def test_quantize_command(samples, tmp_path, capsys):
    from fracdet.cli import main

    model = save_artifact(_lite0_artifact(), tmp_path / "m.fracdet")
    data = samples[0].path.parent.parent
    assert main(["quantize", str(data), "--model", str(model), "--out", str(tmp_path / "m8.fracdet")]) == 0
    out = capsys.readouterr().out
    assert ("int8 accepted" in out or "int8 rejected" in out) and "the other half" in out
    art = load_artifact(tmp_path / "m8.fracdet")
    assert art.int8["calibration"]["images"] == len(samples) // 2
    assert art.int8_onnx is not None and isinstance(art.int8["accepted"], bool)
    assert "## int8 inference" in (tmp_path / "m8.model_card.md").read_text()


def test_recalibration_re_measures_int8(samples, tmp_path, capsys):
    from fracdet.cli import main
    from fracdet.quantize import recheck_int8

    art = _lite0_artifact()
    assert recheck_int8(art, samples, "x") is None  # nothing to re-measure
    quantize_artifact(art, samples[:8], samples[8:16], check_note="b", calibration_note="a", test=samples[16:])
    path = save_artifact(art, tmp_path / "q.fracdet")
    data = samples[0].path.parent.parent
    assert main(["calibrate", str(data), "--model", str(path), "--out", str(tmp_path / "c.fracdet")]) == 0
    assert "re-measured on the calibration data" in capsys.readouterr().out
    cal = load_artifact(tmp_path / "c.fracdet")
    assert cal.int8_onnx == art.int8_onnx
    assert str(data) in cal.int8["check"]["on"] and cal.int8["check"]["n"] == len(samples)
    assert "test" not in cal.int8  # measured at the old temperature: dropped, not left stale
