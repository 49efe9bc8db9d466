"""``fracdet models`` and ``fracdet info``: what can be trained, what an artifact holds."""

from __future__ import annotations

import argparse
from typing import Any

from fracdet.cli.options import add_model_option

from fracdet import __version__


def add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="list the registered architectures and whether ImageNet weights are available offline")
    p.set_defaults(func=_cmd_models)


def _cmd_models(a: argparse.Namespace) -> int:
    from fracdet.models import get_spec, list_models
    from fracdet.models.weights import pretrained_available

    for name in list_models():
        spec = get_spec(name)
        avail = "yes" if pretrained_available(name) else "no (use --weights FILE or --no-pretrained)"
        print(f"{name:<20} input {spec.input_size:>3}  ImageNet weights offline: {avail}")
    return 0


def add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="describe a model artifact and the runtime")
    add_model_option(p)
    p.set_defaults(func=_cmd_info)


def _cmd_info(a: argparse.Namespace) -> int:
    import json

    import torch

    from fracdet.artifact import default_model_path, load_artifact

    art = load_artifact(a.model)
    d = art.describe()
    d.pop("training", None)
    print(json.dumps({"model": str(a.model or default_model_path()), **d}, indent=2, default=str))
    from fracdet.runtime import active_allocator

    from fracdet.inference import choose_backend

    print(f"fracdet {__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"allocator {active_allocator()}, inference backend (auto) {choose_backend('auto', art)}")
    from fracdet.inference.assess import check_features
    from fracdet.inference.onnx import OnnxRunner

    runner = OnnxRunner(art.float32_graph(), threads=1)
    how = check_features(art.ood_reference(), runner.output_names, runner.output_width("features"))[1]
    ood = art.ood
    print(f"out-of-distribution check: {how}" + (f"; threshold {ood['threshold']:.1f} ({ood.get('threshold_rule')}, "
                                                  f"{ood.get('method')})" if art.ood_arrays and "threshold" in ood else ""))
    if art.int8_onnx:
        from fracdet.inference.backends import int8_decision

        print(f"int8 graph: {int8_decision(art.int8)[1]}")
    return 0


