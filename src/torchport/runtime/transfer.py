"""Moving a batch between the host and its device, and timing the device's share of it.

On a GPU, inputs are staged in pinned host memory and copied without blocking, on a CUDA
stream of the worker thread's own (batches of several workers overlap on the GPU);
outputs come back once per call, blocking, as the answer is read as soon as the call
returns. CUDA events recorded on that stream around the call give the time the batch took
on the device (`take_device_seconds`), which the latency target plans with: a wall clock
read around work queued on a GPU measures the queueing, not the work.

On the CPU these are conversions only (dtypes), with no clock.
"""

from __future__ import annotations

import threading
from typing import Any

import torch


class _Thread(threading.local):
    def __init__(self) -> None:
        self.streams: dict[str, torch.cuda.Stream] = {}
        self.started: torch.cuda.Event | None = None
        """Recorded on the thread's stream as the first input was copied to the device."""
        self.seconds: float | None = None
        """The device's time on the calls since the last `take_device_seconds`."""


_thread = _Thread()


def thread_stream(device: str) -> torch.cuda.Stream:
    """This thread's own CUDA stream on `device` (made on first use)."""
    found = _thread.streams
    if device not in found:
        found[device] = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
    return found[device]


def to_device(value: Any, device: str, dtype: torch.dtype | None) -> Any:
    """The tensors in `value` (nested in tuples, lists, dicts) on `device`, floating ones
    as `dtype` (None: kept as they are). On a GPU the copies run on this thread's stream,
    from pinned memory, and the device's clock starts."""
    if not device.startswith("cuda"):
        return _map(value, device, dtype, non_blocking=False, pin=False)
    stream = thread_stream(device)
    torch.cuda.set_stream(stream)
    if _thread.started is None:  # a handler calling its model twice is timed as one span
        started = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        started.record(stream)
        _thread.started = started
    return _map(value, device, dtype, non_blocking=True, pin=True)


def to_host(value: Any) -> Any:
    """The tensors in `value` on the CPU, floating ones as float32, copied back blocking;
    the device's clock, if running, stops after the copy."""
    host = _map(value, "cpu", torch.float32, non_blocking=False, pin=False)
    started = _thread.started
    if started is not None:
        _thread.started = None
        ended = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        ended.record(torch.cuda.current_stream())
        ended.synchronize()
        seconds = started.elapsed_time(ended) / 1000
        _thread.seconds = (_thread.seconds or 0.0) + seconds
    return host


def take_device_seconds() -> float | None:
    """The device's time on this thread's calls since the last take (None: none ran on a
    GPU), and start afresh."""
    seconds, _thread.seconds = _thread.seconds, None
    _thread.started = None
    return seconds


def note_device_seconds(seconds: float | None) -> None:
    """Record a device time measured elsewhere (a worker process's reply) for this thread."""
    _thread.seconds = seconds


def _map(value: Any, device: str, dtype: torch.dtype | None, non_blocking: bool, pin: bool) -> Any:
    if isinstance(value, torch.Tensor):
        if pin and value.device.type == "cpu":
            value = value.pin_memory()
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype, non_blocking=non_blocking)
        return value.to(device=device, non_blocking=non_blocking)
    if isinstance(value, tuple):
        return tuple(_map(v, device, dtype, non_blocking, pin) for v in value)
    if isinstance(value, list):
        return [_map(v, device, dtype, non_blocking, pin) for v in value]
    if isinstance(value, dict):
        return {k: _map(v, device, dtype, non_blocking, pin) for k, v in value.items()}
    return value
