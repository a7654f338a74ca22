"""`@timed`: a handler step's time, in milliseconds, as the `ts_metrics` TorchServe keeps."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def timed(func: F) -> F:
    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(self, *args, **kwargs)
        finally:
            context = getattr(self, "context", None)
            metrics = getattr(context, "metrics", None)
            if metrics is not None:
                elapsed_ms = (time.perf_counter() - start) * 1000
                metrics.add_time("ts_handler_" + func.__name__, elapsed_ms, None, "ms")

    return wrapper  # type: ignore[return-value]
