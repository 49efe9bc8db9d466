"""Logits of a network (or any batch → logits callable) over labelled samples."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch


@torch.inference_mode()
def collect_logits(model: torch.nn.Module | Callable[[torch.Tensor], Any], samples: Sequence[Any], transform: Any,
                   batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, labels and sample indices for labelled samples (unreadable files are left
    out with a warning, so the indices say which samples the rows belong to).  ``model``: a
    network, or any callable batch → logits such as :meth:`Predictor.logits`."""
    from fracdet.data.loader import make_loader

    is_net = isinstance(model, torch.nn.Module)
    if is_net:
        model.eval()
    logits, labels, index = [], [], []
    for x, y, i in make_loader(samples, transform, batch_size=batch_size):
        if len(x):
            out = model(x.contiguous(memory_format=torch.channels_last)) if is_net else model(x)
            logits.append(out.float().numpy() if torch.is_tensor(out) else np.asarray(out, dtype=np.float32))
            labels.append(y.numpy())
            index.append(i.numpy())
    if not logits:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    return np.concatenate(logits), np.concatenate(labels).astype(int), np.concatenate(index)
