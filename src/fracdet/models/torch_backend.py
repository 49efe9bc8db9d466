"""The PyTorch engine of a :class:`~fracdet.inference.predictor.Predictor`: the network rebuilt
from the artifact's weights (channels-last), optionally with test-time augmentation.  Reached
by module name from the inference layer, which itself never imports PyTorch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fracdet.models.export import build_model


class TorchRunner:
    """``runner(batch N×C×S×S) -> N logits`` with PyTorch; ``tta``: views averaged (fracdet.models.tta)."""

    def __init__(self, artifact: Any, threads: int | None = None, tta: bool = False) -> None:
        if threads:
            torch.set_num_threads(threads)
        with torch.inference_mode(False):  # may first be asked for inside inference mode
            self.model = build_model(artifact).to(memory_format=torch.channels_last)
        self.tta_model = None
        if tta:
            from fracdet.models.tta import with_tta

            self.tta_model = with_tta(self.model, artifact)

    @torch.inference_mode()
    def __call__(self, batch: Any) -> np.ndarray:
        x = torch.as_tensor(np.asarray(batch, dtype=np.float32))
        if self.tta_model is not None:
            return self.tta_model(x).float().numpy().reshape(-1)
        return self.model(x.contiguous(memory_format=torch.channels_last)).float().numpy().reshape(-1)

    @torch.inference_mode()
    def outputs(self, batch: Any) -> dict[str, np.ndarray]:
        """The named outputs of the graph (``logit``; ``features``/``fracture_map`` where the
        network gives them), as numpy. Under TTA the logit is the views' mean while the features
        (OOD check) and the fracture map (boxes) are the image's own view's."""
        x = torch.as_tensor(np.asarray(batch, dtype=np.float32)).contiguous(memory_format=torch.channels_last)
        if not hasattr(self.model, "graph_outputs"):
            return {"logit": self(batch)}
        graph = self.model.graph_outputs(x)
        if self.tta_model is not None:  # the image's own view is the first view: not run twice
            graph["logit"] = self.tta_model(x, own=graph["logit"])
        return {k: v.float().numpy() for k, v in graph.items()}
