"""``fracdet upgrade-model OLD NEW``: re-save an older model file in the current format."""

from __future__ import annotations

import argparse
from typing import Any


def add_upgrade(sub: Any) -> None:
    p = sub.add_parser("upgrade-model", help="re-save a model file in the current format (adds its ONNX graph)",
                       description="Read a model file of an older format (PyTorch needed for format 2) and "
                                   "write it in the current one, which carries its float32 ONNX graph so that "
                                   "prediction needs no PyTorch. Weights, calibration and metrics are unchanged.")
    p.add_argument("model", help="the model file to read")
    p.add_argument("out", help="the model file to write")
    p.set_defaults(func=_cmd_upgrade)


def _cmd_upgrade(a: argparse.Namespace) -> int:
    from fracdet.artifact import FORMAT_VERSION, load_artifact, save_artifact

    art = load_artifact(a.model)
    save_artifact(art, a.out, half=True)
    print(f"{a.out}: model format {FORMAT_VERSION}, float32 graph included")
    return 0
