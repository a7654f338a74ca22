"""Imports as another server's handler code sees them, for that code alone.

A module loaded here gets builtins of its own whose `__import__` sends the names of the
other server's library (`ts…` for TorchServe handlers, `sagemaker_inference…` for
SageMaker scripts) to torchport's compatibility modules, and a top-level name that is a
`.py` file beside the module (a helper shipped with it) to that file, loaded the same way;
every other import is Python's own. Nothing is added to `sys.path` or under those names in
`sys.modules`, so two models' handlers — or the real library installed beside torchport —
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


class ScopedImporter:
    """Loads the Python files under `files` with `aliases` (a library's top-level name →
    the torchport package that stands in for it) resolved for their code alone."""

    def __init__(self, files: Path, aliases: Mapping[str, str]) -> None:
        self.files = files
        self.aliases = dict(aliases)
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
            top, _, rest = name.partition(".")
            if top in self.aliases:
                home = self.aliases[top]
                return _compat(home, f"{home}.{rest}" if rest else home, fromlist or ())
            if top == name and (self.files / f"{name}.py").is_file():
                return self.load(f"{name}.py")
        return builtins.__import__(name, globals, locals, fromlist or (), level)


def _compat(home: str, name: str, fromlist: Sequence[str]) -> ModuleType:
    """`import name` (the top package is returned) or `from name import …` (the module)."""
    leaf = importlib.import_module(name)
    if not fromlist:
        return importlib.import_module(home)
    for item in fromlist:
        if item != "*" and not hasattr(leaf, item):
            # `from ts.torch_handler import base_handler`: a submodule. When there is none,
            # Python raises the ImportError that names it.
            with contextlib.suppress(ModuleNotFoundError):
                importlib.import_module(f"{name}.{item}")
    return leaf
