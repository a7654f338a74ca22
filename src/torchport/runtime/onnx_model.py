"""An ONNX model run by ONNX Runtime, called like a module (torch tensors in and out), so
a package's handler runs unchanged whichever runtime holds its model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchport.errors import InvalidInput, ModelLoadError


def providers_for(device: str, available: list[str]) -> list[Any]:
    """ONNX Runtime's execution providers for `device` (`cpu`, `cuda:N`): CUDA's for a GPU,
    with the CPU's for what it does not run, refused where this ONNX Runtime has none."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise ModelLoadError(
            f"device {device}: this ONNX Runtime has no CUDA provider (it has "
            f"{', '.join(available)}); install onnxruntime-gpu, or serve the model on cpu",
            field="device",
        )
    index = int(device.partition(":")[2] or 0)
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


class OnnxModel:
    def __init__(self, path: Path, threads: int = 0, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelLoadError(
                "this package's model is ONNX: install ONNX Runtime (pip install 'torchport[onnx]')"
            ) from None
        options = ort.SessionOptions()
        # Every core: a request alone runs fastest over all of them, and batches running
        # side by side share the session's one pool of threads.
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        if "GOMP_SPINCOUNT" in os.environ or os.environ.get("OMP_WAIT_POLICY") == "PASSIVE":
            # As torch's threads spin at most briefly (the server sets GOMP_SPINCOUNT):
            # idle threads sleep rather than spin on the cores the event loop needs.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only; they are raised, not logged
        providers = providers_for(device, ort.get_available_providers())
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.placed_on = device
        """Where ONNX Runtime runs it (host arrays in and out, whatever the device)."""
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *args: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(args) != len(self.input_names):
            raise InvalidInput(
                f"the ONNX model takes {len(self.input_names)} inputs "
                f"({', '.join(self.input_names)}), got {len(args)}"
            )
        feeds = {
            name: arg.detach().cpu().numpy() if isinstance(arg, torch.Tensor) else np.asarray(arg)
            for name, arg in zip(self.input_names, args, strict=True)
        }
        outputs = tuple(torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feeds))
        return outputs[0] if len(outputs) == 1 else outputs
