"""Two versions of a model side by side on the same requests: how their outputs and
latencies differ (what a person checks before promoting one over the other)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from torchport.errors import InvalidInput
from torchport.types import Tensors

if TYPE_CHECKING:
    from torchport.service.inference import LoadedVersion

RECENT_REQUESTS = 32
RECENT_MAX_BYTES = 1 << 20


async def compare_versions(
    model: str, first: LoadedVersion, second: LoadedVersion, samples: list[Tensors]
) -> dict[str, Any]:
    """Run both versions on every sample; per output, the largest absolute and relative
    difference and the rows that differ; per version, the latency."""
    for loaded in (first, second):
        try:
            loaded.signature.check_inputs(samples[0])
        except InvalidInput as exc:
            raise InvalidInput(
                f"version {loaded.version} cannot take the recent requests: {exc}", field="version"
            ) from None
    times: dict[int, list[float]] = {first.version: [], second.version: []}
    diffs: dict[str, dict[str, float]] = {}
    for inputs in samples:
        outputs = []
        for loaded in (first, second):
            started = time.perf_counter()
            outputs.append(await loaded.batcher.predict(inputs))
            times[loaded.version].append(time.perf_counter() - started)
        for name, x in outputs[0].items():
            y = outputs[1].get(name)
            d = diffs.setdefault(
                name, {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "rows_differing": 0.0}
            )
            if y is None or x.shape != y.shape:
                d["rows_differing"] += len(x)
                continue
            if x.dtype == object or y.dtype == object:
                d["rows_differing"] += float(np.sum(np.any((x != y).reshape(len(x), -1), axis=1)))
                continue
            delta = np.abs(x.astype(np.float64) - y.astype(np.float64))
            scale = np.maximum(np.abs(x.astype(np.float64)), 1e-12)
            d["max_abs_diff"] = max(d["max_abs_diff"], float(delta.max(initial=0.0)))
            d["max_rel_diff"] = max(d["max_rel_diff"], float((delta / scale).max(initial=0.0)))
            d["rows_differing"] += float(np.sum(np.any((delta > 0).reshape(len(x), -1), axis=1)))
    return {
        "model": model,
        "a": first.version,
        "b": second.version,
        "samples": len(samples),
        "outputs": diffs,
        "latency_ms": {
            str(v): {"p50": 1000 * float(np.median(t)), "max": 1000 * max(t)}
            for v, t in times.items()
        },
    }
