"""Imports as a TorchServe handler's code sees them, for that code alone.

A handler module loaded here gets builtins of its own whose `__import__` sends `ts` and
`ts.…` to torchport's compatibility modules and a top-level name that is a `.py` file of
the package (a helper shipped as an extra file) to that file, loaded the same way; every
other import is Python's own. Nothing is added to `sys.path` or under the name `ts` in
`sys.modules`, so two models' handlers — or a real TorchServe installed beside torchport —
never see each other's modules.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from torchport.runtime.loader import import_file

COMPAT = "torchport.runtime.torchserve"


class ScopedImporter:
    """Loads a package's Python files with the `ts` compatibility imports."""

    def __init__(self, files: Path) -> None:
        self.files = files
        self._modules: dict[str, ModuleType] = {}
        self._lock = threading.RLock()
        self._builtins = dict(vars(builtins))
        self._builtins["__import__"] = self._import

    def load(self, relative: str) -> ModuleType:
        """The module of the package's file `relative` (loaded once)."""
        with self._lock:
            module = self._modules.get(relative)
            if module is None:
                module = import_file(self.files / relative, builtins=self._builtins)
                self._modules[relative] = module
            return module

    def _import(
        self,
        name: str,
        globals: Mapping[str, Any] | None = None,
        locals: Mapping[str, Any] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> ModuleType:
        if level == 0:
            top = name.partition(".")[0]
            if top == "ts":
                return _compat(name, fromlist or ())
            if top == name and (self.files / f"{name}.py").is_file():
                return self.load(f"{name}.py")
        return builtins.__import__(name, globals, locals, fromlist or (), level)


def _compat(name: str, fromlist: Sequence[str]) -> ModuleType:
    leaf = importlib.import_module(f"{COMPAT}.{name}")
    if not fromlist:
        return importlib.import_module(f"{COMPAT}.ts")
    for item in fromlist:
        if item != "*" and not hasattr(leaf, item):
            # `from ts.torch_handler import base_handler`: a submodule. When there is none,
            # Python raises the ImportError that names it.
            with contextlib.suppress(ModuleNotFoundError):
                importlib.import_module(f"{COMPAT}.{name}.{item}")
    return leaf
