"""Worker processes report a batch's errors as the in-process runner does: a handler's
refusal keeps its class (a 400 stays a 400), a crash names only its type, and the worker
that answered stays in service."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tests.helpers import handler_package
from torchport.errors import InvalidInput, TorchportError
from torchport.runtime.process_pool import ProcessPoolRunner
from torchport.settings import Limits

PICKY_HANDLER = """
from torchport.errors import InvalidInput
from torchport.runtime import Handler as Base

class Handler(Base):
    # Refuses negative inputs as the caller's fault; crashes on huge ones.
    def preprocess(self, inputs):
        x = inputs["x"]
        if (x < 0).any():
            raise InvalidInput("x must not be negative", field="x")
        if (x > 100).any():
            raise RuntimeError("secret detail: /etc/torchport/token")
        return super().preprocess(inputs)
"""


@pytest.fixture(scope="module")
def picky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessPoolRunner]:
    work = tmp_path_factory.mktemp("picky")
    out = handler_package(work, "picky", PICKY_HANDLER, example={"x": np.ones((1, 2), np.float32)})
    runner = ProcessPoolRunner(out, Limits(), workers=1)
    try:
        yield runner
    finally:
        runner.close()


def test_a_handler_s_refusal_keeps_its_class_across_the_process(
    picky: ProcessPoolRunner,
) -> None:
    with pytest.raises(InvalidInput, match="x must not be negative") as refused:
        picky.predict({"x": -np.ones((1, 2), np.float32)})
    assert refused.value.field == "x"


def test_a_crash_names_only_its_type_and_the_worker_stays_in_service(
    picky: ProcessPoolRunner, caplog: pytest.LogCaptureFixture
) -> None:
    [pid] = picky.pids
    for _ in range(3):  # more errors than workers: each one gives its worker back
        with pytest.raises(TorchportError) as crashed:
            picky.predict({"x": np.full((1, 2), 1000, np.float32)})
        assert crashed.value.code == "internal"
        assert str(crashed.value) == "internal error: RuntimeError"
    assert "secret detail" in caplog.text  # the operator's log has the traceback
    out = picky.predict({"x": np.ones((1, 2), np.float32)})
    np.testing.assert_array_equal(out["output"], np.ones((1, 2), np.float32))
    assert picky.pids == [pid]


def test_a_hung_idle_worker_is_found_by_the_watchdog_and_replaced(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    work = tmp_path_factory.mktemp("watched")
    out = handler_package(
        work, "watched", PICKY_HANDLER, example={"x": np.ones((1, 2), np.float32)}
    )
    runner = ProcessPoolRunner(out, Limits(), workers=1, watchdog_s=0.5)
    try:
        [pid] = runner.pids
        os.kill(pid, signal.SIGSTOP)  # alive, and answering nothing: as a deadlock looks
        deadline = time.monotonic() + 60
        while runner.pids in ([], [pid]):
            assert time.monotonic() < deadline, "the hung worker was not replaced"
            time.sleep(0.2)
        out_rows = runner.predict({"x": np.ones((1, 2), np.float32)})["output"]
        np.testing.assert_array_equal(out_rows, np.ones((1, 2), np.float32))
    finally:
        runner.close()
