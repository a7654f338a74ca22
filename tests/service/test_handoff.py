"""The hand-off between a front end and the engine, in one process: `RemoteDataPlane`
against a real `Intake` on a Unix socket, in front of the real services."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from torchport.errors import InvalidInput, NotFound
from torchport.server import open_services
from torchport.service import DataPlane, InferRequest, Management, Registry
from torchport.service.handoff import INLINE_BYTES, intake_address
from torchport.service.intake import Intake
from torchport.service.management import LocalRepository
from torchport.service.remote import EngineAway, RemoteDataPlane, RemoteRepository
from torchport.settings import Settings
from torchport.store import SQLiteStore

T = TypeVar("T")
Engine = tuple[Registry, DataPlane, Management]


@pytest.fixture
def engine(tmp_path: Path, mlp_package: Path) -> Iterator[Engine]:
    store = SQLiteStore(tmp_path / "store")
    registry, dataplane, management = open_services(store, Settings(store=store.root), cores=2)
    management.upload(mlp_package, actor="test")
    registry.start()
    try:
        yield registry, dataplane, management
    finally:
        registry.close()
        store.close()


def through_intake(
    engine: Engine, work: Callable[[RemoteDataPlane, Intake, str], Awaitable[T]]
) -> T:
    """Run `work` with a front end connected to an intake in front of `engine`."""
    _, dataplane, management = engine

    async def main() -> T:
        intake = Intake(dataplane, LocalRepository(management))
        address = intake_address()
        await intake.start(address)
        remote = RemoteDataPlane(address)
        link = asyncio.create_task(remote.run())
        await asyncio.wait_for(remote.connected.wait(), 10)
        try:
            return await work(remote, intake, address)
        finally:
            remote.close()
            link.cancel()
            await intake.close()

    return asyncio.run(main())


def rows(n: int) -> np.ndarray:
    return np.random.default_rng(n).random((n, 32), dtype=np.float32)


@pytest.mark.parametrize("n", [1, 4096], ids=["inline", "shared-memory"])
def test_an_answer_through_the_intake_is_the_engines_own(engine: Engine, n: int) -> None:
    x = rows(n)
    assert (n * 32 * 4 > INLINE_BYTES) == (n > 1)
    before = set(os.listdir("/dev/shm"))

    async def work(remote: RemoteDataPlane, _intake: Intake, _address: str) -> None:
        handed = await remote.infer(InferRequest("mlp", {"input": x}))
        local = await engine[1].infer(InferRequest("mlp", {"input": x}))
        assert handed.version == local.version == 1
        assert np.array_equal(handed.outputs["output"], local.outputs["output"])
        await asyncio.sleep(0.05)  # the front end's note that it removed the answer's block

    through_intake(engine, work)
    assert not set(os.listdir("/dev/shm")) - before


def test_requests_are_counted_once_by_the_engine(engine: Engine) -> None:
    x = rows(2)

    async def work(remote: RemoteDataPlane, _intake: Intake, _address: str) -> str:
        for _ in range(3):
            with remote.track("oip_rest", "mlp"):
                await remote.infer(InferRequest("mlp", {"input": x}))
        with pytest.raises(InvalidInput), remote.track("oip_rest", "mlp"):
            await remote.infer(InferRequest("mlp", {"input": x[:, :31]}))
        await asyncio.sleep(0.05)
        return (await remote.metrics_text()).decode()

    text = through_intake(engine, work)
    ok = 'torchport_requests_total{model="mlp",outcome="ok",protocol="oip_rest",version="1"} 3.0'
    bad = 'outcome="invalid_input",protocol="oip_rest"'
    assert ok in text
    assert next(line for line in text.splitlines() if bad in line).endswith(" 1.0")


def test_questions_get_the_engines_answers_and_errors_keep_their_field(engine: Engine) -> None:
    async def work(remote: RemoteDataPlane, _intake: Intake, _address: str) -> None:
        local = engine[1]
        assert await remote.models() == await local.models() == ["mlp"]
        assert await remote.metadata("mlp") == await local.metadata("mlp")
        assert await remote.signature("mlp") == await local.signature("mlp")
        assert await remote.ready("mlp") is True
        assert await remote.server_ready() is True
        with pytest.raises(NotFound) as missing:
            await remote.resolve("nope")
        assert missing.value.field == "model"
        with pytest.raises(InvalidInput) as wrong:
            await remote.infer(InferRequest("mlp", {"input": rows(1)}, outputs=["nope"]))
        assert wrong.value.field == "nope"
        states = await RemoteRepository(remote).index()
        assert [(s.model, s.version, s.state) for s in states] == [("mlp", 1, "READY")]

    through_intake(engine, work)


def test_a_change_of_default_reaches_the_front_end(engine: Engine, mlp_package: Path) -> None:
    _, _, management = engine

    async def work(remote: RemoteDataPlane, _intake: Intake, _address: str) -> None:
        assert await remote.resolve("mlp") == 1
        await asyncio.to_thread(management.upload, mlp_package, actor="test", promote=True)
        for _ in range(100):
            if await remote.resolve("mlp") == 2:
                break
            await asyncio.sleep(0.01)
        assert await remote.resolve("mlp") == 2
        answer = await remote.infer(InferRequest("mlp", {"input": rows(1)}))
        assert answer.version == 2

    through_intake(engine, work)


def test_without_the_engine_inference_is_503_and_the_front_end_reconnects(
    engine: Engine,
) -> None:
    _, dataplane, management = engine

    async def work(remote: RemoteDataPlane, intake: Intake, address: str) -> None:
        await intake.close()
        for _ in range(100):
            if not remote.connected.is_set():
                break
            await asyncio.sleep(0.01)
        with pytest.raises(EngineAway) as away:
            await remote.infer(InferRequest("mlp", {"input": rows(1)}))
        assert away.value.code == "unavailable"
        assert await remote.server_ready() is False
        again = Intake(dataplane, LocalRepository(management))
        await again.start(address)
        await asyncio.wait_for(remote.connected.wait(), 10)
        answer = await remote.infer(InferRequest("mlp", {"input": rows(1)}))
        assert answer.version == 1
        await again.close()

    through_intake(engine, work)
