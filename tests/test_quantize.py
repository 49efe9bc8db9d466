"""int8 quantization: exported graph, the accept/reject check, artifact round trip, backends, CLI."""

import numpy as np
import onnx
import pytest
import torch

from fracdet.artifact import ModelArtifact, load_artifact, save_artifact
from fracdet.data.layouts import load_dataset
from fracdet.errors import FracdetError
from fracdet.models.export import freeze_same_padding, onnx_bytes
from fracdet.models import create_model
from fracdet.inference import load_model
from fracdet.cpu import KERNEL_CLASSES, cpu_summary, int8_kernel_class
from fracdet.inference.backends import int8_decision
from fracdet.quantize import INT8_TOLERANCE, quantize_artifact, within_tolerance
from fracdet.transforms import PreprocessSpec
from synth import make_class_folders

LENIENT = {"mean_abs_diff": 1.0, "p99_abs_diff": 1.0, "auroc_drop": 1.0}
STRICT = {"mean_abs_diff": 0.0, "p99_abs_diff": 0.0, "auroc_drop": 1.0}  # int8 is never bit-equal to float32


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
    here = int8_kernel_class()
    assert report["measured_on"] == cpu_summary() and report["test"]["measured_on"] == cpu_summary()
    assert set(report["checks"]) == {here} and report["checks"][here]["accepted"]
    assert report["checks"][here]["measured_on"]["kernel_class"] == here
    path = save_artifact(art, tmp_path / "q.fracdet")
    loaded = load_artifact(path)
    assert loaded.int8_onnx == art.int8_onnx and loaded.int8["accepted"]
    assert loaded.int8["checks"] == report["checks"]  # survives the file
    graph = onnx.load_from_string(loaded.int8_onnx)
    assert any(n.op_type == "QLinearConv" for n in graph.graph.node)  # really int8
    from fracdet.quantize import image_convs

    stem = image_convs(onnx.load_from_string(art.float32_graph()))
    assert len(stem) == 1 and image_convs(graph) == stem  # the image is convolved in float32, not rounded to 8 bits

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


def test_quantize_command(samples, tmp_path, capsys, monkeypatch):
    import fracdet.quantize
    from fracdet.cli import main

    model = save_artifact(_lite0_artifact(), tmp_path / "m.fracdet")
    data = samples[0].path.parent.parent
    for tolerance, verdict in ((LENIENT, "int8 accepted"), (STRICT, "int8 rejected")):
        monkeypatch.setattr(fracdet.quantize, "INT8_TOLERANCE", tolerance)
        assert main(["quantize", str(data), "--model", str(model), "--out", str(tmp_path / f"{verdict}.fracdet")]) == 0
        out = capsys.readouterr().out
        assert verdict in out and "the other half" in out and f"int8 kernel class {int8_kernel_class()}" in out
        art = load_artifact(tmp_path / f"{verdict}.fracdet")
        assert art.int8["calibration"]["images"] == len(samples) // 2
        assert art.int8_onnx is not None and art.int8["accepted"] is (verdict == "int8 accepted")
        assert art.int8["checks"][int8_kernel_class()]["accepted"] is art.int8["accepted"]
        assert "## int8 inference" in (tmp_path / f"{verdict}.model_card.md").read_text()


def test_int8_kernel_class_from_cpuinfo_flags():
    base = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov sse sse2 ssse3 sse4_1 sse4_2 popcnt"
    haswell = base + " avx f16c fma avx2 bmi1 bmi2"  # also AMD EPYC Zen 1-3
    skylake_sp = haswell + " avx512f avx512dq avx512cd avx512bw avx512vl"
    cases = {
        base: "other",  # no AVX at all
        base + " avx f16c": "other",  # Sandy/Ivy Bridge: AVX without AVX2
        base + " avx avx2": "other",  # MLAS's AVX2 path also needs FMA
        haswell: "avx2",
        haswell + " avx_vnni": "avxvnni",  # Alder Lake
        haswell + " avx512f": "avx2",  # AVX-512 F alone (Knights Landing): AVX2 integer kernels
        skylake_sp: "avx512",
        skylake_sp + " avx512_vnni": "avx512vnni",  # Cascade Lake, Ice Lake, AMD Zen 4
        skylake_sp + " avx512_vnni avx_vnni amx_tile amx_int8 amx_bf16": "avx512vnni",  # Sapphire Rapids
    }
    for flags, expected in cases.items():
        assert int8_kernel_class(flags) == expected, flags
        assert int8_kernel_class(set(flags.split())) == expected
    assert int8_kernel_class("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp", machine="aarch64") == "non-x86"
    assert int8_kernel_class(machine="aarch64") == "non-x86"
    assert int8_kernel_class() in KERNEL_CLASSES  # this machine
    summary = cpu_summary()
    assert summary["kernel_class"] == int8_kernel_class() and isinstance(summary["cpu"], str) and summary["cpu"]
    assert set(summary["flags"]) <= set(__import__("fracdet.cpu").cpu.INT8_FLAGS)


def _report(**checks: bool) -> dict:
    def entry(kc: str, ok: bool) -> dict:
        return {"n": 10, "mean_abs_diff": 0.01 if ok else 0.08, "p99_abs_diff": 0.05, "on": "val", "accepted": ok,
                "reason": "x", "measured_on": {"cpu": f"a {kc} CPU", "kernel_class": kc, "flags": []}}

    return {"accepted": True, "reason": "x", "check": {"n": 10, "mean_abs_diff": 0.01},
            "checks": {kc: entry(kc, ok) for kc, ok in checks.items()}}


def test_int8_decision_follows_the_check_of_this_kernel_class():
    q = _report(avx2=True, avx512vnni=False)
    assert int8_decision(q, "avx2") == (True, int8_decision(q, "avx2")[1])
    ok, why = int8_decision(q, "avx2")
    assert ok and "within the tolerance" in why and "a avx2 CPU" in why
    ok, why = int8_decision(q, "avx512vnni")
    assert not ok and "outside the tolerance" in why and "0.080" in why
    ok, why = int8_decision(q, "avxvnni")  # measured elsewhere only
    assert not ok and "measured on avx2, avx512vnni, this CPU is avxvnni" in why and "--recheck" in why
    # the top-level check counts where it says where it was measured
    top = {"accepted": True, "reason": "x", "check": {"n": 3, "mean_abs_diff": 0.0, "p99_abs_diff": 0.0},
           "measured_on": {"cpu": "c", "kernel_class": "avx2", "flags": []}}
    assert int8_decision(top, "avx2")[0] and not int8_decision(top, "avx512vnni")[0]
    # an artifact from before per-CPU checks: accepted somewhere, nobody knows where
    old = {"accepted": True, "reason": "int8 accepted", "check": {"n": 3, "mean_abs_diff": 0.001}}
    for kc in KERNEL_CLASSES:
        ok, why = int8_decision(old, kc)
        assert not ok and "unknown CPU" in why and "--recheck" in why
    assert not int8_decision({}, "avx2")[0] and not int8_decision(None, "avx2")[0]
    assert int8_decision(q)[0] is (int8_kernel_class() == "avx2")  # default: this CPU


def test_int8_measured_on_another_kernel_class_is_opt_in_until_rechecked(samples, tmp_path, caplog):
    import logging

    from fracdet.cli import main
    from fracdet.inference import choose_backend

    here = int8_kernel_class()
    other = "avx2" if here != "avx2" else "avx512vnni"
    art = _lite0_artifact()
    quantize_artifact(art, samples[::2], samples[1::2], check_note="odd", calibration_note="even", tolerance=LENIENT)
    assert choose_backend("auto", art) == "int8"
    # the same report, as if measured on a CPU of another int8 kernel class
    entry = {**art.int8["checks"][here], "measured_on": {"cpu": "elsewhere", "kernel_class": other, "flags": []}}
    art.int8 = {**art.int8, "measured_on": entry["measured_on"], "checks": {other: entry}}
    with caplog.at_level(logging.DEBUG, logger="fracdet"):
        assert choose_backend("auto", art) == "onnx"
    assert f"int8 measured on {other}, this CPU is {here}" in caplog.text and "--recheck" in caplog.text
    caplog.clear()
    assert choose_backend("int8", art) == "int8" and "not accepted for this CPU" in caplog.text  # opt-in, warned
    old = {k: v for k, v in art.int8.items() if k not in ("measured_on", "checks")}  # no measured_on at all
    assert choose_backend("auto", type("A", (), {"int8": old, "int8_onnx": art.int8_onnx})()) == "onnx"

    path = save_artifact(art, tmp_path / "elsewhere.fracdet")
    assert load_model(path).backend == "onnx"
    data = samples[0].path.parent.parent
    assert main(["quantize", str(data), "--model", str(path), "--out", str(tmp_path / "here.fracdet"),
                 "--recheck"]) == 0
    re = load_artifact(tmp_path / "here.fracdet")
    assert re.int8_onnx == art.int8_onnx  # re-measured, not re-quantized
    assert set(re.int8["checks"]) == {other, here} and re.int8["checks"][other] == entry
    assert re.int8["checks"][here]["measured_on"] == cpu_summary()
    assert re.int8["measured_on"]["kernel_class"] == other  # the top level stays the first measurement
    assert re.int8["checks"][here]["n"] == len(samples) - len(samples) // 2  # the same check images
    assert load_model(tmp_path / "here.fracdet").backend == ("int8" if re.int8["checks"][here]["accepted"] else "onnx")


def test_recheck_needs_an_int8_graph(samples, tmp_path, capsys):
    from fracdet.cli import main

    model = save_artifact(_lite0_artifact(), tmp_path / "plain.fracdet")
    data = samples[0].path.parent.parent
    assert main(["quantize", str(data), "--model", str(model), "--out", str(tmp_path / "x.fracdet"), "--recheck"]) == 2
    assert "no int8 graph" in capsys.readouterr().err and not (tmp_path / "x.fracdet").exists()


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
    here = int8_kernel_class()
    assert cal.int8["measured_on"] == cpu_summary() and set(cal.int8["checks"]) == {here}
    assert cal.int8["checks"][here]["n"] == len(samples) and cal.int8["checks"][here]["measured_on"] == cpu_summary()
