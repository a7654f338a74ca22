"""Where a version runs: CPU or a GPU, decided from what the devices report.

Every decision here is a pure function of plain data (the devices' names and free memory,
what a version needs), so it is tested on any machine; only `visible_devices` asks torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torchport.errors import InvalidInput, ModelLoadError

_DEVICE = re.compile(r"^(cpu|auto|cuda)(?::(\d{1,2}))?$")


@dataclass(frozen=True)
class Device:
    """A device a version runs on: `cpu`, or `cuda` with its index."""

    kind: str
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @classmethod
    def parse(cls, text: str) -> Device:
        """A placed device back from its name (`cpu`, `cuda:N`)."""
        kind, _, index = text.partition(":")
        return cls(kind, int(index)) if index else cls(kind)


CPU = Device("cpu")


@dataclass(frozen=True)
class DeviceInfo:
    """What a GPU reports: its index, name and memory."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int


def parse_device(value: str) -> str:
    """`cpu`, `auto`, `cuda` or `cuda:N`, checked (the `device` setting's validator)."""
    match = _DEVICE.match(value.strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise InvalidInput(f"device {value!r}: use cpu, cuda, cuda:N or auto", field="device")
    return value.strip().lower()


def place(
    wanted: str,
    need_bytes: int,
    devices: list[DeviceInfo],
    *,
    spread: list[int] | None = None,
    worker: int = 0,
) -> Device:
    """The device a version (or its `worker`-th worker) runs on.

    `wanted` is the version's `device` setting: `cpu`; `cuda` (the first GPU) or `cuda:N`,
    refused when it is not there or lacks `need_bytes` free; `auto`, the GPU with the most
    free memory that fits, the CPU on a machine without one. `spread` (the `devices`
    setting: GPU indices) puts worker i on `spread[i % len(spread)]`.
    """
    wanted = parse_device(wanted)
    if wanted == "cpu":
        return CPU
    by_index = {d.index: d for d in devices}
    if spread:
        missing = [i for i in spread if i not in by_index]
        if missing:
            raise ModelLoadError(_absent(f"cuda:{missing[0]}", devices), field="device")
        return _fits(by_index[spread[worker % len(spread)]], need_bytes)
    if wanted == "auto":
        if not devices:
            return CPU
        best = max(devices, key=lambda d: (d.free_bytes, -d.index))
        return _fits(best, need_bytes, among=devices)
    index = 0 if wanted == "cuda" else int(wanted.split(":")[1])
    if index not in by_index:
        raise ModelLoadError(_absent(wanted, devices), field="device")
    return _fits(by_index[index], need_bytes)


def _fits(device: DeviceInfo, need_bytes: int, among: list[DeviceInfo] | None = None) -> Device:
    if need_bytes > device.free_bytes:
        free = ", ".join(f"cuda:{d.index} {_gib(d.free_bytes)}" for d in among or [device])
        raise ModelLoadError(
            f"the version needs {_gib(need_bytes)} of GPU memory and the most free is "
            f"{_gib(device.free_bytes)} (free: {free}); it was not loaded",
            field="device",
        )
    return Device("cuda", device.index)


def _absent(wanted: str, devices: list[DeviceInfo]) -> str:
    if not devices:
        return (
            f"device {wanted} is not available: this machine has no GPU that torch can use "
            "(a CPU build of torch, no driver, or CUDA_VISIBLE_DEVICES hides them); "
            "set device to cpu or auto"
        )
    listed = ", ".join(f"cuda:{d.index} ({d.name})" for d in devices)
    return f"device {wanted} is not available; this machine has {listed}"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def allow_tf32(on: bool) -> None:
    """TF32 for float32 matrix products and convolutions on NVIDIA GPUs, for this process
    (torch holds it process-wide; worker processes read `TORCHPORT_TF32`)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def visible_devices() -> list[DeviceInfo]:
    """The GPUs torch can use here, with their free memory now (none on a CPU build)."""
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        found.append(DeviceInfo(index, torch.cuda.get_device_name(index), total, free))
    return found


@dataclass(frozen=True)
class DeviceFigures:
    """A GPU's figures at scrape time."""

    index: int
    name: str
    total_bytes: int
    used_bytes: int
    """In use on the device by every process (the driver's count)."""
    allocated_bytes: int
    """Held by this process's tensors."""
    reserved_bytes: int
    """Held by this process's caching allocator (allocated and cached)."""
    utilization: float | None
    """Share of the last sample period a kernel ran (NVML), None where NVML is missing."""


def device_figures() -> list[DeviceFigures]:
    """Figures of every GPU torch can use (none on a CPU build, without asking the driver)."""
    import torch

    if not torch.cuda.is_available():
        return []
    figures = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        figures.append(
            DeviceFigures(
                index,
                torch.cuda.get_device_name(index),
                total,
                total - free,
                torch.cuda.memory_allocated(index),
                torch.cuda.memory_reserved(index),
                _utilization(index),
            )
        )
    return figures


def _utilization(index: int) -> float | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100.0
    except Exception:  # no NVML library or driver: the figure is left out
        return None
