"""Cache the shipped model's backbone feature maps at a higher input size, for training map and
image heads fast (issue 13).  Train and validation films of the model's recorded split only —
the test split is never read here.

    .venv/bin/python scripts/maphead_cache.py [--data ../shared/data/fracatlas] [--size 384]
        [--model M] [--out runs/maphead/cache-384.npz] [--flip] [--fine]

Stores, per film: the stride-16 map (blocks.4, 112 channels) and the final map (conv_head,
1280 channels) as float16, label, split, original (H, W) and the path relative to the data root.
``--flip`` adds a horizontally mirrored copy of every training film (augmentation for the heads);
``--fine`` stores the stride-8 map (blocks.2, 40 channels) too, for a stride-8 box head.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("maphead_cache")


class _Maps(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, fine: bool = False) -> None:
        super().__init__()
        self.backbone, self.indices = backbone, [2, 3] if fine else [3]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        final, mids = self.backbone.forward_intermediates(x, indices=self.indices)
        return (final, *mids[::-1])  # final, stride 16, then stride 8


def _onnx_backbone(backbone: torch.nn.Module, size: int, fine: bool = False):  # noqa: ANN202 - an OnnxRunner
    """The backbone's two maps as an onnxruntime graph (≈3× PyTorch eager on this CPU)."""
    import io

    from fracdet.inference.onnx import OnnxRunner
    from fracdet.models.export import freeze_same_padding

    buf = io.BytesIO()
    frozen = freeze_same_padding(_Maps(backbone, fine).eval(), size)
    torch.onnx.export(frozen, (torch.zeros(2, 3, size, size),), buf, input_names=["image"],
                      output_names=["final", "mid", "fine"][:3 if fine else 2], dynamic_axes={"image": {0: "batch"}}, opset_version=17, dynamo=False)
    return OnnxRunner(buf.getvalue())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/fracatlas"))
    ap.add_argument("--model", default=None, help="artifact whose backbone to use (default: the shipped model)")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--out", default="")
    ap.add_argument("--flip", action="store_true")
    ap.add_argument("--fine", action="store_true", help="also store the stride-8 map (blocks.2, 40 channels)")
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from fracdet.artifact import load_artifact
    from fracdet.data.layouts import load_dataset
    from fracdet.fracturemap import original_hw
    from fracdet.io.images import read_image
    from fracdet.transforms import ModelTransform, PreprocessSpec

    art = load_artifact(a.model)
    recorded = art.recorded_split() or {}
    model = art.build_model().eval()
    backbone = model.backbone
    spec = PreprocessSpec.from_dict({**art.preprocess.to_dict(), "input_size": a.size})
    tf = ModelTransform(spec)
    ds = load_dataset(a.data)
    root = Path(a.data).resolve()
    items = []
    for s in ds.samples:
        rel = str(Path(s.path).resolve().relative_to(root))
        split = recorded.get(rel)
        if split in ("train", "val"):
            items.append((s, rel, split))
    log.info("%d films (train %d, val %d) at %d px", len(items), sum(i[2] == "train" for i in items),
             sum(i[2] == "val" for i in items), a.size)
    views = [(i, False) for i in range(len(items))]
    if a.flip:
        views += [(i, True) for i in range(len(items)) if items[i][2] == "train"]
    s16, s32, s8, meta = [], [], [], []
    t0 = time.perf_counter()
    runner = _onnx_backbone(backbone, a.size, a.fine)
    for start in range(0, len(views), a.batch_size):
        chunk = views[start:start + a.batch_size]
        xs, kept = [], []
        for i, flip in chunk:
            s, rel, split = items[i]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    xray = read_image(s.path, min_size=a.size)
                except Exception as exc:  # noqa: BLE001 - unreadable training film: skipped, said once
                    log.warning("skipped %s: %s", rel, exc)
                    continue
            pix = xray.pixels[:, ::-1] if flip else xray.pixels
            xs.append(tf(np.ascontiguousarray(pix)))
            hw = original_hw(xray.pixels, xray.meta)
            kept.append((rel, split, int(s.label), hw, flip))
        if not xs:
            continue
        final, mid, *fine = runner.session.run(None, {"image": np.stack(xs)})
        s16.append(mid.astype(np.float16))
        if fine:
            s8.append(fine[0].astype(np.float16))
        s32.append(final.astype(np.float16))
        meta.extend(kept)
        if (start // a.batch_size) % 20 == 0:
            done = start + len(chunk)
            log.info("%d/%d views, %.1f views/s", done, len(views), done / (time.perf_counter() - t0))
    out = Path(a.out or ROOT / f"runs/maphead/cache-{a.size}{'-flip' if a.flip else ''}{'-fine' if a.fine else ''}.npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    extra = {"s8": np.concatenate(s8)} if s8 else {}
    np.savez(tmp, s16=np.concatenate(s16), s32=np.concatenate(s32), **extra,
             path=np.array([m[0] for m in meta]), split=np.array([m[1] for m in meta]),
             label=np.array([m[2] for m in meta]), hw=np.array([m[3] for m in meta]),
             flip=np.array([m[4] for m in meta]), size=a.size)
    tmp.replace(out)
    log.info("wrote %s: %d views in %.0f s", out, len(meta), time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
