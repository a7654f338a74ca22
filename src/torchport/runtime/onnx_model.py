"""An ONNX model run by ONNX Runtime, called like a module (torch tensors in and out), so
a package's handler runs unchanged whichever runtime holds its model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchport.errors import InvalidInput, ModelLoadError


class OnnxModel:
    def __init__(self, path: Path, threads: int = 0) -> None:
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
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
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
