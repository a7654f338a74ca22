"""Packages and settings from other servers, as torchport's own: TorchServe's `.mar`."""

from torchport.migrate.mar import ImportedMar, import_mar

__all__ = ["ImportedMar", "import_mar"]
