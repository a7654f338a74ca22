"""`BaseHandler`: TorchServe's default handler, run by torchport.

The steps and their defaults are TorchServe's — `initialize(context)`, `preprocess(data)`
(`torch.as_tensor`), `inference(data)` (the model under `torch.inference_mode`),
`postprocess(data)` (`.tolist()`), `handle(data, context)` — with one difference: the
model is the one torchport loaded from the package's verified files (state dicts as
safetensors, TorchScript by torch's own loader), so nothing is unpickled here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import torch

from torchport.runtime.torchserve.ts.context import Context
from torchport.runtime.torchserve.ts.handler_utils.timer import timed
from torchport.runtime.torchserve.ts.utils.util import load_label_mapping

logger = logging.getLogger("torchport.torchserve")


class BaseHandler:
    """Loads the model in `initialize`; `handle` runs pre-processing, inference and
    post-processing on a batch (a list with one dict per request)."""

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, str] | None = None
        self.device: torch.device | None = None
        self.initialized = False
        self.context: Context | None = None
        self.model_pt_path: str | None = None
        self.manifest: dict[str, Any] | None = None
        self.map_location: str | None = None
        self.explain = False
        self.target = 0
        self.profiler_args: dict[str, Any] = {}
        self.model_yaml_config: dict[str, Any] = {}

    def initialize(self, context: Context) -> None:
        """Take the model, the device (the CPU), the manifest and `index_to_name.json`."""
        self.model_yaml_config = getattr(context, "model_yaml_config", {}) or {}
        properties = context.system_properties
        self.map_location = "cpu"
        self.device = torch.device(self.map_location)
        self.manifest = context.manifest
        model_dir = properties.get("model_dir") or ""
        serialized = (self.manifest or {}).get("model", {}).get("serializedFile")
        self.model_pt_path = os.path.join(model_dir, serialized) if serialized else None
        model = getattr(context, "preloaded_model", None)
        if model is None and self.model_pt_path and self.model_pt_path.endswith(".pt"):
            model = self._load_torchscript_model(self.model_pt_path)
        if model is None:
            raise RuntimeError("No model weights could be loaded")
        self.model = model
        if isinstance(model, torch.nn.Module):
            # An exported program's module is in inference form already and refuses eval().
            with contextlib.suppress(NotImplementedError):
                self.model.eval()
        self.mapping = load_label_mapping(os.path.join(model_dir, "index_to_name.json"))
        self.initialized = True

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        return torch.jit.load(model_pt_path, map_location=self.device)  # type: ignore[no-untyped-call]

    def _load_pickled_model(self, model_dir: str, model_file: str, model_pt_path: str) -> Any:
        """The eager model: torchport has loaded it from the package already (its state
        dict converted to safetensors at import); nothing is unpickled."""
        context = self.context
        model = getattr(context, "preloaded_model", None) if context is not None else None
        if model is None:
            raise RuntimeError(
                "the eager model is loaded by torchport from the package; call "
                "super().initialize(context) and use self.model"
            )
        return model

    @timed
    def preprocess(self, data: Any) -> Any:
        return torch.as_tensor(data, device=self.device)

    @timed
    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    @timed
    def postprocess(self, data: Any) -> Any:
        return data.tolist()

    def handle(self, data: list[dict[str, Any]], context: Context) -> Any:
        """One answer per request of `data`, in order."""
        start = time.time()
        self.context = context
        if self._is_describe():
            output: Any = [self.describe_handle()]
        else:
            if self._is_explain():
                raise NotImplementedError("explanations (Captum) are not supported by torchport")
            output = self.postprocess(self.inference(self.preprocess(data)))
        if context.metrics is not None:
            elapsed_ms = round((time.time() - start) * 1000, 2)
            context.metrics.add_time("HandlerTime", elapsed_ms, None, "ms")
        return output

    def _is_describe(self) -> bool:
        return bool(self.context and self.context.get_request_header(0, "describe") == "True")

    def describe_handle(self) -> Any:
        """Custom metadata for a `describe: True` request (none by default)."""
        return None

    def _is_explain(self) -> bool:
        return bool(self.context and self.context.get_request_header(0, "explain") == "True")

    def explain_handle(self, data_preprocess: Any, raw_data: Any) -> Any:
        raise NotImplementedError("explanations (Captum) are not supported by torchport")
