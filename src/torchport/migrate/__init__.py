"""Packages and settings from other servers, as torchport's own: TorchServe's `.mar`."""

from torchport.migrate.mar import import_mar

__all__ = ["import_mar"]
