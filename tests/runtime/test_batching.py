"""Dynamic batching: packed and split exactly, bounded queues, deadlines."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from torchport.errors import DeadlineExceeded, Overloaded
from torchport.runtime import Batcher, BatchPolicy, open_runner


def test_concurrent_requests_of_mixed_sizes_get_exactly_their_own_rows(mlp_package: Path) -> None:
    runner = open_runner(mlp_package)
    rng = np.random.default_rng(0)
    requests = [
        rng.standard_normal((int(rng.integers(1, 6)), 32)).astype(np.float32) for _ in range(60)
    ]
    want = [runner.predict({"input": x})["output"] for x in requests]
    batcher = Batcher(runner, BatchPolicy(max_batch_size=16, max_batch_delay_ms=5))

    async def main() -> list[np.ndarray]:
        results = await asyncio.gather(*(batcher.predict({"input": x}) for x in requests))
        return [r["output"] for r in results]

    got = asyncio.run(main())
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert batcher.stats.requests == 60
    assert batcher.stats.batches < 60, "concurrent requests were not batched"
    assert batcher.stats.largest_batch <= 16
    batcher.close()


def test_requests_whose_shapes_differ_are_not_packed_together(slow_package: Path) -> None:
    batcher = Batcher(
        open_runner(slow_package), BatchPolicy(max_batch_size=64, max_batch_delay_ms=50)
    )

    async def main() -> list[np.ndarray]:
        shapes = [(1, 4), (2, 3), (1, 4), (3, 3)]
        results = await asyncio.gather(
            *(batcher.predict({"x": np.full(s, i, np.float32)}) for i, s in enumerate(shapes))
        )
        return [r["output"] for r in results]

    for i, out in enumerate(asyncio.run(main())):
        assert np.all(out == 2 * i)
    batcher.close()


def test_a_full_queue_refuses_at_once(slow_package: Path) -> None:
    batcher = Batcher(open_runner(slow_package), BatchPolicy(max_batch_size=1, max_queue=2))
    x = {"x": np.ones((1, 4), np.float32)}

    async def main() -> list[object]:
        running = asyncio.ensure_future(batcher.predict(x))
        await asyncio.sleep(0.02)  # it runs; the next two wait; the one after is refused
        waiting = [asyncio.ensure_future(batcher.predict(x)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert batcher.queued == 2
        started = time.monotonic()
        with pytest.raises(Overloaded, match="queue .* is full"):
            await batcher.predict(x)
        assert time.monotonic() - started < 0.05
        return await asyncio.gather(running, *waiting)

    results = asyncio.run(main())
    assert all(np.all(r["output"] == 2) for r in results)
    assert batcher.stats.refused == 1
    batcher.close()


def test_a_request_past_its_deadline_is_dropped(slow_package: Path) -> None:
    batcher = Batcher(open_runner(slow_package), BatchPolicy(max_batch_size=1))
    x = {"x": np.ones((1, 4), np.float32)}

    async def main() -> None:
        busy = asyncio.ensure_future(batcher.predict(x))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await batcher.predict(x, deadline=time.monotonic() + 0.05)
        assert time.monotonic() - started < 0.15  # dropped at its deadline, not after the wait
        await busy

    asyncio.run(main())
    assert batcher.stats.expired == 1
    batcher.close()


def test_a_lone_request_does_not_wait_for_company(mlp_package: Path) -> None:
    batcher = Batcher(open_runner(mlp_package), BatchPolicy(max_batch_delay_ms=500))
    x = {"input": np.ones((1, 32), np.float32)}

    async def main() -> float:
        started = time.monotonic()
        await batcher.predict(x)
        return time.monotonic() - started

    assert asyncio.run(main()) < 0.4
    batcher.close()


def test_a_changed_policy_keeps_what_the_latency_target_measured(mlp_package: Path) -> None:
    batcher = Batcher(open_runner(mlp_package), BatchPolicy(max_batch_size=64, target_p99_ms=100))
    assert batcher.cap == 64  # nothing measured yet
    assert batcher.target is not None
    for _ in range(5):
        batcher.target.batch_ran(1, 0.200)  # a slow machine: one row takes 200 ms
    assert batcher.cap == 1
    batcher.set_policy(BatchPolicy(max_batch_size=4, target_p99_ms=100))
    assert batcher.cap == 1
    batcher.set_policy(BatchPolicy(max_batch_size=4))
    assert batcher.cap == 4
    batcher.close()


def test_a_latency_target_refuses_what_it_cannot_serve_in_time(slow_package: Path) -> None:
    # `slow` takes 200 ms a batch: with a 300 ms target, a request queued behind a full
    # batch cannot make it, and is refused at once instead of answered late.
    policy = BatchPolicy(max_batch_size=1, max_queue=64, target_p99_ms=300)
    batcher = Batcher(open_runner(slow_package), policy)
    x = {"x": np.ones((1, 4), np.float32)}

    async def main() -> list[object]:
        await batcher.predict(x)  # measured: 200 ms for one row
        return list(
            await asyncio.gather(*(batcher.predict(x) for _ in range(6)), return_exceptions=True)
        )

    started = time.monotonic()
    results = asyncio.run(main())
    refused = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, dict)]
    assert refused
    assert served
    assert "latency target of 300 ms" in str(refused[0])
    assert batcher.target is not None
    assert batcher.target.shed == len(refused)
    assert time.monotonic() - started < 0.2 * (len(served) + 1) + 0.5
    batcher.close()


def test_with_a_latency_target_results_stay_exact(mlp_package: Path) -> None:
    runner = open_runner(mlp_package)
    rng = np.random.default_rng(1)
    requests = [
        rng.standard_normal((int(rng.integers(1, 4)), 32)).astype(np.float32) for _ in range(200)
    ]
    want = [runner.predict({"input": x})["output"] for x in requests]
    batcher = Batcher(runner, BatchPolicy(max_batch_size=16, target_p99_ms=10_000))

    async def main() -> list[np.ndarray]:
        results = await asyncio.gather(*(batcher.predict({"input": x}) for x in requests))
        return [r["output"] for r in results]

    for g, w in zip(asyncio.run(main()), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert batcher.target is not None
    assert batcher.target.shed == 0
    batcher.close()


def test_after_a_burst_lone_requests_stop_waiting_for_company(mlp_package: Path) -> None:
    batcher = Batcher(open_runner(mlp_package), BatchPolicy(max_batch_delay_ms=300))
    x = {"input": np.ones((1, 32), np.float32)}

    async def main() -> float:
        await asyncio.gather(*(batcher.predict(x) for _ in range(20)))  # under load
        await batcher.predict(x)  # may still wait once: it cannot know the load has gone
        started = time.monotonic()
        await batcher.predict(x)
        return time.monotonic() - started

    assert asyncio.run(main()) < 0.25
    batcher.close()


def test_two_workers_share_a_burst_evenly(slow_package: Path) -> None:
    batcher = Batcher(
        open_runner(slow_package), BatchPolicy(max_batch_size=64, max_batch_delay_ms=20, workers=2)
    )
    x = {"x": np.ones((1, 4), np.float32)}

    async def main() -> None:
        first = asyncio.ensure_future(batcher.predict(x))  # runs at once, alone
        await asyncio.sleep(0.01)
        await asyncio.gather(first, *(batcher.predict(x) for _ in range(20)))

    asyncio.run(main())
    # 21 rows over two workers: no batch takes more than its share of what was waiting.
    assert batcher.stats.requests == 21
    assert batcher.stats.largest_batch <= 11
    batcher.close()


class _Sizes:
    """A batch observer that keeps each batch's rows."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def batch(self, rows: int, seconds: float) -> None:
        self.rows.append(rows)

    def waited(self, seconds: float) -> None:
        pass


def test_two_workers_share_the_load_not_what_is_left_of_it(slow_package: Path) -> None:
    # 24 clients, each sending its next request 10 ms after its answer (the way back and
    # out again). A share of the rows in the server at the moment a worker comes free
    # counts none of those on their way: the load splits into ever more, smaller batches.
    sizes = _Sizes()
    batcher = Batcher(
        open_runner(slow_package),
        BatchPolicy(max_batch_size=64, max_batch_delay_ms=50, workers=2),
        observer=sizes,
    )
    x = {"x": np.ones((1, 4), np.float32)}

    async def client(start: float) -> None:
        await asyncio.sleep(start)
        for _ in range(8):
            await batcher.predict(x)
            await asyncio.sleep(0.01)

    async def main() -> None:
        await asyncio.gather(*(client(0.07 * (i % 3)) for i in range(24)))  # three waves

    asyncio.run(main())
    assert sum(sizes.rows) == 24 * 8
    # Every batch after the first few holds half of the 24 (before: a median of 9).
    assert sorted(sizes.rows)[len(sizes.rows) // 2] == 12
    assert max(sizes.rows) <= 12
    batcher.close()


def test_two_workers_give_a_light_batch_every_waiting_row(mlp_package: Path) -> None:
    # The mlp computes in far less than a request may wait for company: splitting the
    # waiting rows over both workers would only double the batches the event loop runs.
    batcher = Batcher(
        open_runner(mlp_package), BatchPolicy(max_batch_size=64, max_batch_delay_ms=200, workers=2)
    )
    x = {"input": np.ones((1, 32), np.float32)}

    async def main() -> None:
        await batcher.predict(x)  # measured: a light batch
        # Two run at once, alone (a worker each); the other 19 wait and go as one batch.
        await asyncio.gather(*(batcher.predict(x) for _ in range(21)))

    asyncio.run(main())
    assert batcher.stats.requests == 22
    assert batcher.stats.largest_batch == 19
    batcher.close()


TOKENS_MODEL = """
import torch


class Tokens(torch.nn.Module):
    # Per row: the mean of the real (unmasked) ids, and every id doubled.
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = mask.to(torch.float32)
        mean = (ids.to(torch.float32) * weights).sum(1) / weights.sum(1).clamp(min=1)
        return mean, ids * 2


def build() -> torch.nn.Module:
    return Tokens()
"""


@pytest.fixture(scope="module")
def tokens_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torchport

    work = tmp_path_factory.mktemp("tokens")
    (work / "model.py").write_text(TOKENS_MODEL)
    out = work / "tokens.tpa"
    ids = np.array([[5, 6, 7]], np.int64)
    torchport.package(
        name="tokens",
        code=f"{work / 'model.py'}:build",
        example={"ids": ids, "mask": np.ones_like(ids)},
        signature={
            "inputs": [
                {"name": "ids", "datatype": "INT64", "shape": [-1, -1], "pad_value": 0},
                {"name": "mask", "datatype": "INT64", "shape": [-1, -1], "pad_value": 0},
            ],
            "outputs": [
                {"name": "mean", "datatype": "FP32", "shape": [-1]},
                {"name": "doubled", "datatype": "INT64", "shape": [-1, -1], "padded_like": "ids"},
            ],
        },
        out=out,
    )
    return out


def test_sequences_of_different_lengths_are_padded_into_one_batch(tokens_package: Path) -> None:
    runner = open_runner(tokens_package)
    rng = np.random.default_rng(2)
    requests = []
    for _ in range(40):
        rows, length = int(rng.integers(1, 4)), int(rng.integers(1, 12))
        ids = rng.integers(1, 1000, (rows, length)).astype(np.int64)
        requests.append({"ids": ids, "mask": np.ones_like(ids)})
    want = [runner.predict(r) for r in requests]
    batcher = Batcher(runner, BatchPolicy(max_batch_size=32, max_batch_delay_ms=20))

    async def main() -> list[dict[str, np.ndarray]]:
        return list(await asyncio.gather(*(batcher.predict(r) for r in requests)))

    for got, expected, request in zip(asyncio.run(main()), want, requests, strict=True):
        assert got["doubled"].shape == request["ids"].shape  # the padding is cut back off
        np.testing.assert_array_equal(got["doubled"], expected["doubled"])
        np.testing.assert_allclose(got["mean"], expected["mean"], rtol=1e-6)
    assert batcher.stats.batches < 20, "requests of different lengths were not batched"
    batcher.close()


@pytest.mark.parametrize(
    ("inputs", "outputs", "problem"),
    [
        ([{"name": "t", "datatype": "BYTES", "shape": [-1, -1], "pad_value": 0}], [], "BYTES"),
        ([{"name": "x", "datatype": "FP32", "shape": [-1, 4], "pad_value": 0}], [], "dynamic"),
        (
            [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
            [{"name": "y", "datatype": "FP32", "shape": [-1, -1], "padded_like": "x"}],
            "not an input with a pad_value",
        ),
    ],
)
def test_padding_declarations_are_checked(
    inputs: list[dict[str, object]], outputs: list[dict[str, object]], problem: str
) -> None:
    from pydantic import ValidationError

    from torchport.types import Signature

    outputs = outputs or [{"name": "y", "datatype": "FP32", "shape": [-1]}]
    with pytest.raises(ValidationError, match=problem):
        Signature.model_validate({"inputs": inputs, "outputs": outputs})


OUT_OF_MEMORY_HANDLER = """
import time

import torch
from torchport.runtime import Handler as Base


class Handler(Base):
    # A device with room for four rows: a larger batch fails as CUDA's allocator does.
    def __call__(self, inputs):
        x = inputs["x"]
        time.sleep(0.05)
        if len(x) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"y": x * 2}
"""


def test_a_batch_the_device_has_no_memory_for_answers_503_and_the_next_are_halved(
    tmp_path: Path,
) -> None:
    from tests.helpers import handler_package
    from torchport.errors import Unavailable

    package = handler_package(
        tmp_path, "oom", OUT_OF_MEMORY_HANDLER, example={"x": np.ones((1, 2), np.float32)}
    )
    batcher = Batcher(
        open_runner(package), BatchPolicy(max_batch_size=16, max_batch_delay_ms=20, workers=1)
    )

    async def round_() -> list[object]:
        return await asyncio.gather(
            *(batcher.predict({"x": np.full((1, 2), i, np.float32)}) for i in range(16)),
            return_exceptions=True,
        )

    failed_rounds = 0
    for _ in range(5):
        results = asyncio.run(round_())
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            assert isinstance(error, Unavailable)
            assert "ran out of memory running a batch of" in str(error)
        if not errors:
            break
        failed_rounds += 1
    assert 1 <= failed_rounds < 5  # it failed, then fitted
    assert batcher.cap <= 4
    for i, result in enumerate(results):
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["y"], np.full((1, 2), 2 * i, np.float32))
    batcher.close()


DEVICE_TIMED_HANDLER = """
from torchport.runtime import Handler as Base
from torchport.runtime.transfer import note_device_seconds


class Handler(Base):
    # Reports its batches' device time as a worker process's reply does: 100 ms a row.
    def __call__(self, inputs):
        x = inputs["x"]
        note_device_seconds(0.1 * len(x))
        return {"y": x * 2}
"""


def test_a_latency_target_plans_with_the_device_time_a_batch_reports(tmp_path: Path) -> None:
    from tests.helpers import handler_package

    package = handler_package(
        tmp_path, "timed", DEVICE_TIMED_HANDLER, example={"x": np.ones((1, 2), np.float32)}
    )
    batcher = Batcher(open_runner(package), BatchPolicy(max_batch_size=16, target_p99_ms=1000))
    assert batcher.target is not None

    async def one() -> None:
        out = await batcher.predict({"x": np.ones((1, 2), np.float32)})
        assert out["y"].tolist() == [[2.0, 2.0]]

    for _ in range(3):
        asyncio.run(one())
    # The call itself takes microseconds; the plan follows the 100 ms the device reported.
    assert batcher.target.times.estimate(1) == pytest.approx(0.1)
    assert batcher.target.times.estimate(4) == pytest.approx(0.4)
    # Measured at one row; one size past what was measured is tried next.
    assert batcher.cap == 2
    batcher.close()
