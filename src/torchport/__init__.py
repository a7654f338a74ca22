"""torchport: take PyTorch models to production.

    import torchport
    m = torchport.load("digits.tpa")
    m.predict({"input": x})
    torchport.package(module, name="digits", example={"input": x}, out="digits.tpa")

Importing this package is cheap: torch is imported only when a model is loaded or packaged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchport.version import __version__

if TYPE_CHECKING:
    from torchport.embed import EmbeddedModel, load
    from torchport.packaging import package
    from torchport.runtime.handler import Handler

__all__ = ["EmbeddedModel", "Handler", "__version__", "load", "package"]

_LAZY = {
    "load": "torchport.embed",
    "EmbeddedModel": "torchport.embed",
    "package": "torchport.packaging",
    "Handler": "torchport.runtime.handler",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torchport' has no attribute {name!r}")
