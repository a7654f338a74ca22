"""An AOTInductor package, called like a module (torch tensors in and out, on the host),
so a package's handler runs unchanged on the device its kernels were compiled for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from torchport.errors import ModelLoadError
from torchport.runtime.transfer import to_device, to_host


def check_compiled_for(compiled_for: str, device: str, file: str) -> None:
    """Refuse to run kernels compiled for one kind of device on another (`field` device)."""
    kind = device.partition(":")[0]
    if kind != compiled_for:
        other = "cuda" if compiled_for == "cpu" else "cpu"
        raise ModelLoadError(
            f"{file} was compiled by AOTInductor for {compiled_for} and this version runs on "
            f"{device}: set device to {compiled_for}, or export the package again for "
            f"{kind} (torchport export --to aoti --device {kind}); a {other} build cannot "
            "run it",
            field="device",
        )


class AotiModel:
    def __init__(self, path: Path, device: str) -> None:
        cuda = device.startswith("cuda")
        index = int(device.partition(":")[2] or 0) if cuda else -1
        self.compiled = torch._inductor.aoti_load_package(str(path), device_index=index)
        self.placed_on = device
        """Where its kernels run (host tensors in and out, whatever the device)."""
        self._cuda = cuda

    def __call__(self, *args: Any) -> Any:
        if not self._cuda:
            return self.compiled(*args)
        return to_host(self.compiled(*to_device(args, self.placed_on, None)))
