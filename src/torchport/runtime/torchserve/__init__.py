"""TorchServe handlers run unchanged: their `ts` imports, their context, their answers."""

from torchport.runtime.torchserve.adapter import MAR_MANIFEST, TorchServeHandler

__all__ = ["MAR_MANIFEST", "TorchServeHandler"]
