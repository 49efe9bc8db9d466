"""``fracdet fit-ood``: fit a model's out-of-distribution reference (see fracdet.ood_fit)."""

from __future__ import annotations

import argparse
from typing import Any

from fracdet.cli.options import add_layout_option, add_model_option


def add_fit_ood(sub: Any) -> None:
    p = sub.add_parser(
        "fit-ood", help="fit the out-of-distribution reference that makes a model refuse films it cannot judge",
        description="From the model's training split (its recorded split, or the data's own splits): the "
        "films' pooled features (a Ledoit-Wolf Mahalanobis reference) and an inverted-film detector; the "
        "refusal threshold is the 99.5th percentile of the validation films' distances (never the test "
        "split). A graph exported before it had a features output is re-exported from the weights "
        "(PyTorch needed then). Everything else in the model is kept.",
    )
    p.add_argument("data", help="the model's training data (labelled images, any layout)")
    add_model_option(p)
    p.add_argument("--out", required=True, metavar="NEW_MODEL", help="the model with its OOD reference (.fracdet)")
    add_layout_option(p)
    p.set_defaults(func=_cmd_fit_ood)


def _cmd_fit_ood(a: argparse.Namespace) -> int:
    from fracdet.artifact import load_artifact, save_artifact
    from fracdet.data.layouts import load_dataset
    from fracdet.data.selection import select_samples
    from fracdet.modelcard import write_model_card_beside
    from fracdet.ood_fit import fit_artifact_ood

    art = load_artifact(a.model)
    ds = load_dataset(a.data, layout=a.layout)
    train, train_note = select_samples(ds, "train", art.training, art.data, art.recorded_split())
    val, val_note = select_samples(ds, "val", art.training, art.data, art.recorded_split())
    info = fit_artifact_ood(art, [s.path for s in train], [s.path for s in val])
    print(f"OOD reference on {len(train)} training films ({train_note}); threshold {info['threshold']:.1f} = "
          f"{info['threshold_rule']} ({len(val)} films, {val_note})")
    print(f"inverted validation films detected {100 * info['inverted_val_detected']:.1f}%, upright ones called "
          f"inverted {100 * info['upright_val_called_inverted']:.1f}%")
    out = save_artifact(art, a.out)
    card = write_model_card_beside(art, out)
    print(f"written: {out}, {card}")
    return 0
