"""``fracdet quantize``: add a checked int8 onnxruntime graph to a model artifact."""

from __future__ import annotations

import argparse
from typing import Any

from fracdet.cli.options import add_layout_option, add_model_option


def add_quantize(sub: Any) -> None:
    p = sub.add_parser(
        "quantize", help="add an int8 onnxruntime graph (about 2x faster on CPU), checked against float32",
        description="Quantize a model to int8 for onnxruntime: activation ranges are measured on up to 256 "
        "training images; its agreement with float32 is measured on held-out images and stored with it. "
        "--backend auto uses it only within tolerance (mean |dp| <= 0.02, p99 <= 0.10, AUROC drop <= 0.01); "
        "otherwise only --backend int8 does, with a warning. On the model's own training data (or "
        "data with splits) it calibrates on the train split and checks on val; on other data, on a seeded "
        "half of the images and checks on the other half. Training adds it already unless --no-int8. "
        "onnxruntime's int8 kernels differ by CPU, so the check is filed under this CPU's int8 kernel class "
        "and --backend auto trusts it only on CPUs of that class; --recheck re-measures a model's stored int8 "
        "graph here (same check images) and adds this CPU's check, without re-quantizing.",
    )
    p.add_argument("data", help="labelled images (any layout), ideally the model's training data")
    add_model_option(p)
    p.add_argument("--out", required=True, metavar="NEW_MODEL", help="the artifact with int8 (.fracdet)")
    add_layout_option(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration choice (default 0)")
    p.add_argument("--recheck", action="store_true",
                   help="keep the stored int8 graph and re-measure it against float32 on this CPU's int8 kernels")
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(a: argparse.Namespace) -> int:
    import numpy as np

    from fracdet.artifact import load_artifact, save_artifact
    from fracdet.cpu import int8_kernel_class
    from fracdet.data.layouts import load_dataset
    from fracdet.errors import DatasetError, FracdetError
    from fracdet.data.selection import select_samples
    from fracdet.modelcard import write_model_card_beside
    from fracdet.quantize import quantize_artifact, recheck_int8

    art = load_artifact(a.model)
    if a.recheck and art.int8_onnx is None:
        raise FracdetError(f"{a.model or 'the default model'} has no int8 graph to re-measure: "
                           "run fracdet quantize without --recheck")
    ds = load_dataset(a.data, layout=a.layout)
    same = bool(art.data) and art.data.get("fingerprint") == ds.fingerprint()
    test = None
    if ds.has_splits() or same:
        calibration, _ = select_samples(ds, "train", art.training, art.data, art.recorded_split())
        check, _ = select_samples(ds, "val", art.training, art.data, art.recorded_split())
        try:
            test = select_samples(ds, "test", art.training, art.data, art.recorded_split())[0] or None
        except DatasetError:  # no test split: nothing more to report
            test = None
        cal_note, check_note = f"the train split of {a.data}", f"the val split of {a.data}"
    else:
        order = np.random.default_rng(a.seed).permutation(len(ds.samples))
        half = len(order) // 2
        calibration = [ds.samples[i] for i in order[:half]]
        check = [ds.samples[i] for i in order[half:]]
        cal_note, check_note = f"a seeded half of {a.data}", f"the other half of {a.data}"
    if a.recheck:
        q = recheck_int8(art, check, check_note, test=test, keep_other_cpus=True)
        assert q is not None
    else:
        q = quantize_artifact(art, calibration, check, check_note=check_note, calibration_note=cal_note, test=test,
                              seed=a.seed)
    here = int8_kernel_class()
    c = q["checks"][here]
    cpu = c["measured_on"]
    print(f"{c['reason']}")
    print(f"check on {c['on']}: |dp| mean {c['mean_abs_diff']:.4f}, p99 {c['p99_abs_diff']:.4f}, "
          f"max {c['max_abs_diff']:.4f}; same label {100 * c['label_agreement']:.1f}%")
    print(f"measured on {cpu['cpu']}: int8 kernel class {here} ({' '.join(cpu['flags'])}); "
          f"checks stored for: {', '.join(sorted(q['checks']))}")
    if not c["accepted"]:
        print(f"int8 graph stored for --backend int8 only: --backend auto keeps float32 on {here} CPUs")
    else:
        print(f"--backend auto uses int8 on {here} CPUs; elsewhere only after --recheck there")
    out = save_artifact(art, a.out)
    card = write_model_card_beside(art, out)
    print(f"written: {out}, {card}")
    return 0
