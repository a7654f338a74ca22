"""Two versions of a model side by side on the same requests: how their outputs and
latencies differ (what a person checks before promoting one over the other)."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from torchport.agreement import compare_outputs
from torchport.errors import InvalidInput
from torchport.types import Tensors

if TYPE_CHECKING:
    from torchport.service.registry import LoadedVersion

RECENT_REQUESTS = 32
RECENT_MAX_BYTES = 1 << 20


class RecentRequests:
    """The inputs of each model's last `RECENT_REQUESTS` small requests: the traffic two
    versions are compared on.

    Noted on the event loop after each answer: a bounded deque's append needs no lock."""

    def __init__(self) -> None:
        self._by_model: dict[str, deque[Tensors]] = {}

    def note(self, model: str, inputs: Tensors) -> None:
        size = sum(a.nbytes for a in inputs.values() if a.dtype != object)
        if size <= RECENT_MAX_BYTES:
            recent = self._by_model.get(model)
            if recent is None:
                recent = self._by_model.setdefault(model, deque(maxlen=RECENT_REQUESTS))
            recent.append(inputs)

    def of(self, model: str) -> list[Tensors]:
        recent = self._by_model.get(model)
        if not recent:
            raise InvalidInput(
                f"model '{model}' has no recent requests to compare versions on", field="model"
            )
        return list(recent)


async def compare_versions(
    model: str, first: LoadedVersion, second: LoadedVersion, samples: list[Tensors]
) -> dict[str, Any]:
    """Run both versions on every sample; per output of `first`, the largest absolute and
    relative difference and the rows that differ beyond the tolerance every comparison in
    torchport uses (`torchport.agreement`); per version, the latency."""
    for loaded in (first, second):
        try:
            loaded.signature.check_inputs(samples[0])
        except InvalidInput as exc:
            raise InvalidInput(
                f"version {loaded.version} cannot take the recent requests: {exc}", field="version"
            ) from None
    times: dict[int, list[float]] = {first.version: [], second.version: []}
    answers: dict[int, list[Tensors]] = {first.version: [], second.version: []}
    for inputs in samples:
        for loaded in (first, second):
            started = time.perf_counter()
            answers[loaded.version].append(await loaded.batcher.predict(inputs))
            times[loaded.version].append(time.perf_counter() - started)
    differences = compare_outputs(
        first.signature.outputs, answers[first.version], answers[second.version]
    )
    diffs = {
        d.name: {"max_abs_diff": d.max_abs, "max_rel_diff": d.max_rel, "rows_differing": d.rows}
        for d in differences
    }
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
