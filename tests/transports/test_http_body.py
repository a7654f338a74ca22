"""Request bodies within their size and time limits: the body clock cancels a late reader
with `RequestTimeout` and leaves any other cancellation alone."""

from __future__ import annotations

import asyncio

import pytest

from torchport.errors import RequestTimeout
from torchport.transports.http.body import TICK_S, BodyLimit


async def _read(limit: BodyLimit, arrives_after: float) -> str:
    async with limit.clock():
        await asyncio.sleep(arrives_after)
    return "read"


def test_a_body_that_arrives_in_time_is_read() -> None:
    limit = BodyLimit(1024, timeout_s=1.0)
    assert asyncio.run(_read(limit, 0.01)) == "read"


def test_a_late_body_is_cut_off_near_its_timeout() -> None:
    limit = BodyLimit(1024, timeout_s=0.2, setting="body_timeout_s")

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RequestTimeout, match=r"within 0.2 s \(body_timeout_s\)"):
            await _read(limit, 30)
        return loop.time() - started

    took = asyncio.run(main())
    assert 0.2 <= took < 0.2 + 3 * TICK_S


def test_only_the_late_reader_is_cut_off_and_the_clock_serves_many_loops() -> None:
    limit = BodyLimit(1024, timeout_s=0.3)

    async def main() -> list[object]:
        return await asyncio.gather(
            _read(limit, 0.05), _read(limit, 30), _read(limit, 0.1), return_exceptions=True
        )

    for _ in range(2):  # a second event loop (a test client's each) gets a clock of its own
        first, late, third = asyncio.run(main())
        assert (first, third) == ("read", "read")
        assert isinstance(late, RequestTimeout)


def test_a_cancelled_reader_stays_cancelled_not_timed_out() -> None:
    limit = BodyLimit(1024, timeout_s=5.0)

    async def main() -> None:
        task = asyncio.create_task(_read(limit, 30))
        await asyncio.sleep(0.05)
        task.cancel()  # the client went away, or the server stops
        with pytest.raises(asyncio.CancelledError):
            await task
        # and the clock forgot it: nothing left to cancel later
        assert not limit._deadlines.due

    asyncio.run(main())
