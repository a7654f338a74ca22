"""A model on its device, in its precision: weights moved and cast once at load, inputs
moved and cast on the way in, outputs brought back as float32 on the CPU.

Casting is done by hooks on the model (or, for TorchScript, a thin module around it), so
the package's handler runs unchanged: it calls its model as it always does.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from torchport.agreement import TOLERANCES, Tolerance
from torchport.errors import ModelLoadError
from torchport.runtime.devices import CPU, Device
from torchport.runtime.transfer import to_device, to_host
from torchport.types import Datatype

Precision = Literal["fp32", "fp16", "bf16"]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}

# What a reduced-precision run may differ from the package's float32 example by: FP16's
# tolerance of every comparison; bfloat16 keeps 8 bits of mantissa to FP16's 11.
PRECISION_TOLERANCES: dict[str, Tolerance] = {
    "fp16": TOLERANCES[Datatype.FP16],
    "bf16": Tolerance(atol=5e-2, rtol=5e-2),
}


def place_model(model: Any, device: Device, precision: Precision) -> Any:
    """`model` moved to `device` and cast to `precision`, with its inputs and outputs
    converted on each call; the model itself where nothing changes."""
    if (device == CPU or getattr(model, "placed_on", None) == str(device)) and (
        precision == "fp32"
    ):
        return model  # where it runs already (ONNX Runtime, AOTInductor on their device)
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(
            f"device {device} / precision {precision}: this model is not a torch module "
            "(an AOTInductor or ONNX model runs where and how it was exported); export it "
            "for that device and precision, or serve it on cpu in fp32"
        )
    target = str(device)
    dtype = DTYPES[precision]
    # One step: a reduced-precision model never holds a float32 copy on the device.
    model = model.to(device=target, dtype=dtype) if precision != "fp32" else model.to(target)
    if isinstance(model, torch.jit.ScriptModule):
        return _Placed(model, target, dtype)
    model.register_forward_pre_hook(_inputs_hook(target, dtype), with_kwargs=True)
    model.register_forward_hook(_outputs_hook)
    return model


class _Placed(torch.nn.Module):
    """A TorchScript module (which takes no hooks) with its inputs and outputs converted."""

    def __init__(self, inner: torch.jit.ScriptModule, device: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self._convert = _inputs_hook(device, dtype)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = self._convert(self, args, kwargs)
        return _outputs_hook(self, args, self.inner(*args, **kwargs))


def _inputs_hook(device: str, dtype: torch.dtype) -> Any:
    def convert(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return to_device(args, device, dtype), to_device(kwargs, device, dtype)

    return convert


def _outputs_hook(_module: Any, _args: Any, outputs: Any) -> Any:
    return to_host(outputs)
