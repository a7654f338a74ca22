"""A transport's heavy decoding and encoding runs off the event loop; light work stays on
it (a thread hop would cost more than the work)."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from torchport.errors import InvalidInput
from torchport.service import DataPlane, Registry
from torchport.store import SQLiteStore
from torchport.tensors import HEAVY_BYTES


def test_large_work_leaves_the_loop_and_small_work_stays(tmp_path: Path) -> None:
    dataplane = DataPlane(Registry(SQLiteStore(tmp_path / "store")))

    async def main() -> tuple[int, int, int]:
        loop_thread = threading.get_ident()
        small = await dataplane.offload(HEAVY_BYTES - 1, threading.get_ident)
        large = await dataplane.offload(HEAVY_BYTES, threading.get_ident)
        return loop_thread, small, large

    loop_thread, small, large = anyio.run(main)
    assert small == loop_thread
    assert large != loop_thread


def test_an_error_in_offloaded_work_reaches_the_caller(tmp_path: Path) -> None:
    dataplane = DataPlane(Registry(SQLiteStore(tmp_path / "store")))

    def refuse() -> None:
        raise InvalidInput("bad tensor", field="x")

    async def main() -> None:
        await dataplane.offload(HEAVY_BYTES, refuse)

    with pytest.raises(InvalidInput, match="bad tensor"):
        anyio.run(main)
