"""Lets PyPI's torchvision wheel import beside the CPU-only torch in TorchServe's venv.

PyPI's Linux torchvision is built against CUDA torch: with the CPU wheel its C extension
cannot load, and importing torchvision then fails on the one fake-kernel registration it
makes unconditionally (`torchvision::nms`, `qnms`). Defining those two operators first (no
kernel: nothing here calls them) lets the pure-Python parts TorchServe's built-in image
handlers use — `torchvision.transforms` on PIL images — import and run unchanged. Installed
as a `.pth` hook in that venv only; it acts when torchvision is first imported.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any


class _DefineOpsFirst(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch

            library = torch.library.Library("torchvision", "FRAGMENT")
            for schema in (
                "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            ):
                library.define(schema)
            _KEEP.append(library)
        return None


_KEEP: list[Any] = []
sys.meta_path.insert(0, _DefineOpsFirst())
