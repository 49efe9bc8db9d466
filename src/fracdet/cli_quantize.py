"""``fracdet quantize``: add a checked int8 onnxruntime graph to a model artifact."""

from __future__ import annotations

import argparse
from typing import Any

from fracdet.cli_options import add_layout_option, add_model_option


def add_quantize(sub: Any) -> None:
    p = sub.add_parser(
        "quantize", help="add an int8 onnxruntime graph (about 2x faster on CPU), checked against float32",
        description="Quantize a model to int8 for onnxruntime: activation ranges are measured on up to 256 "
        "training images; its agreement with float32 is measured on held-out images and stored with it. "
        "--backend auto uses it only within tolerance (mean |dp| <= 0.02, p99 <= 0.10, AUROC drop <= 0.01); "
        "otherwise only --backend int8 does, with a warning. On the model's own training data (or "
        "data with splits) it calibrates on the train split and checks on val; on other data, on a seeded "
        "half of the images and checks on the other half. Training adds it already unless --no-int8.",
    )
    p.add_argument("data", help="labelled images (any layout), ideally the model's training data")
    add_model_option(p)
    p.add_argument("--out", required=True, metavar="NEW_MODEL", help="the artifact with int8 (.fracdet)")
    add_layout_option(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration choice (default 0)")
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(a: argparse.Namespace) -> int:
    import numpy as np

    from fracdet.artifact import load_artifact, save_artifact
    from fracdet.data.layouts import load_dataset
    from fracdet.errors import DatasetError
    from fracdet.evaluate import select_samples
    from fracdet.modelcard import write_model_card_beside
    from fracdet.quantize import quantize_artifact

    art = load_artifact(a.model)
    ds = load_dataset(a.data, layout=a.layout)
    same = bool(art.data) and art.data.get("fingerprint") == ds.fingerprint()
    test = None
    if ds.has_splits() or same:
        calibration, _ = select_samples(ds, "train", art.training, art.data)
        check, _ = select_samples(ds, "val", art.training, art.data)
        try:
            test = select_samples(ds, "test", art.training, art.data)[0] or None
        except DatasetError:  # no test split: nothing more to report
            test = None
        cal_note, check_note = f"the train split of {a.data}", f"the val split of {a.data}"
    else:
        order = np.random.default_rng(a.seed).permutation(len(ds.samples))
        half = len(order) // 2
        calibration = [ds.samples[i] for i in order[:half]]
        check = [ds.samples[i] for i in order[half:]]
        cal_note, check_note = f"a seeded half of {a.data}", f"the other half of {a.data}"
    q = quantize_artifact(art, calibration, check, check_note=check_note, calibration_note=cal_note, test=test,
                          seed=a.seed)
    c = q["check"]
    print(f"{q['reason']}")
    print(f"check on {c['on']}: |dp| mean {c['mean_abs_diff']:.4f}, p99 {c['p99_abs_diff']:.4f}, "
          f"max {c['max_abs_diff']:.4f}; same label {100 * c['label_agreement']:.1f}%")
    if not q["accepted"]:
        print("int8 graph stored for --backend int8 only: --backend auto keeps float32")
    out = save_artifact(art, a.out)
    card = write_model_card_beside(art, out)
    print(f"written: {out}, {card}")
    return 0
