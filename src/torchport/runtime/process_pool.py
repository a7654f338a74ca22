"""Worker processes: a package's model in separate processes, for heavy pre/post-processing.

Tensors cross the process boundary through shared memory, in the Open Inference Protocol's
raw layout; the control messages are JSON. Nothing is pickled. A worker that dies fails
only the batch it held (`Unavailable`, a 503 to the client) and is restarted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import multiprocessing
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any, cast

import torch

from torchport import shm_tensors
from torchport.archive import Manifest, read_package
from torchport.errors import (
    DeadlineExceeded,
    ModelLoadError,
    TorchportError,
    Unavailable,
    error_for,
)
from torchport.runtime.devices import Device, allow_tf32
from torchport.runtime.placement import Placement, Workers
from torchport.runtime.precision import Precision
from torchport.runtime.transfer import note_device_seconds, take_device_seconds
from torchport.scratch import sweep
from torchport.settings import Limits
from torchport.types import Signature, Tensors

log = logging.getLogger("torchport.workers")

_START_TIMEOUT_S = 300.0
OUT_OF_MEMORY = "device_out_of_memory"
"""A worker's reply for a batch its device had no memory for (raised here as torch's own
error, which the batcher answers with 503 and smaller batches)."""
WATCHDOG_S = 10.0
PING_TIMEOUT_S = 5.0


def _send(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message).encode())


def _recv(conn: Connection) -> dict[str, Any]:
    message = json.loads(conn.recv_bytes())
    assert isinstance(message, dict)
    return message


def _worker_main(
    package: str,
    limits: dict[str, Any],
    torch_threads: int,
    compile: bool,
    weights_dir: str | None,
    device: str,
    precision: str,
    conn: Connection,
) -> None:
    """The worker process: load the package, then answer predict messages until told to stop."""
    import torch

    from torchport.runtime.runner import open_runner

    if torch_threads:
        torch.set_num_threads(torch_threads)
    allow_tf32(os.environ.get("TORCHPORT_TF32") == "1")  # as the server that started it
    try:
        runner = open_runner(
            Path(package),
            Limits(**limits),
            compile=compile,
            weights_dir=Path(weights_dir) if weights_dir else None,
            device=Device.parse(device),
            precision=cast(Precision, precision),
        )
    except Exception as exc:
        _send(conn, {"kind": "error", "error": str(exc)})
        return
    _send(conn, {"kind": "ready", "pid": os.getpid()})
    try:
        while True:
            message = _recv(conn)
            if message["kind"] == "stop":
                return
            if message["kind"] == "ping":
                _send(conn, {"kind": "pong"})
                continue
            block: SharedMemory | None = None
            try:
                inputs = shm_tensors.take(message["inputs"], message["block"], unlink=False)
                take_device_seconds()
                outputs = runner.predict(inputs)
                described, block = shm_tensors.put(outputs)
                reply = {"kind": "ok", "outputs": described, "block": block.name}
                _send(conn, {**reply, "device_seconds": take_device_seconds()})
            except TorchportError as exc:
                _send(conn, {"kind": "error", **exc.to_dict()})
            except torch.cuda.OutOfMemoryError as exc:  # the batcher halves its batches
                _send(conn, {"kind": "error", "code": OUT_OF_MEMORY, "error": str(exc)[:500]})
            except Exception as exc:
                # The client gets what an in-process handler's crash gives: the exception's
                # type only; the server's log gets the traceback.
                _send(
                    conn,
                    {
                        "kind": "error",
                        "error": f"internal error: {type(exc).__name__}",
                        "code": "internal",
                        "traceback": traceback.format_exc(),
                    },
                )
            finally:
                if block is not None:  # the parent attaches, copies and unlinks it
                    shm_tensors.disown(block)
    except (EOFError, OSError):
        return
    finally:
        runner.close()


class WorkerDied(Unavailable):
    """The worker process died while it held a batch."""


class WorkerHung(DeadlineExceeded):
    """The worker process did not answer a batch in time (it is killed)."""


class WorkerProcess:
    """One worker process and the pipe to it; `predict` runs one batch there."""

    def __init__(
        self,
        package: Path,
        limits: Limits,
        torch_threads: int = 0,
        compile: bool = False,
        weights_dir: Path | None = None,
        device: str = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.package = package
        self.limits = limits
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main,
            args=(
                str(package),
                limits.model_dump(),
                torch_threads,
                compile,
                str(weights_dir) if weights_dir else None,
                device,
                precision,
                child,
            ),
            daemon=True,
            name="torchport-worker",
        )
        self.process.start()
        child.close()
        if not self.conn.poll(_START_TIMEOUT_S):
            self.kill()
            raise ModelLoadError("a worker process did not start in time")
        try:
            hello = _recv(self.conn)
        except (EOFError, OSError):
            self.kill()
            raise ModelLoadError("a worker process died while loading the model") from None
        if hello["kind"] != "ready":
            self.kill()
            raise ModelLoadError(f"a worker process could not load the model: {hello['error']}")

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)

    def alive(self) -> bool:
        return self.process.is_alive()

    def predict(self, batch: Tensors, timeout_s: float | None = None) -> Tensors:
        described, block = shm_tensors.put(batch)
        try:
            _send(self.conn, {"kind": "predict", "inputs": described, "block": block.name})
            if timeout_s is not None and not self.conn.poll(timeout_s):
                self.kill()
                raise WorkerHung(
                    f"the worker process (pid {self.pid}) ran this batch past "
                    f"request_timeout_s ({timeout_s:g} s); it was killed and is being replaced"
                )
            reply = _recv(self.conn)
        except (EOFError, OSError, BrokenPipeError):
            raise WorkerDied(
                f"the worker process (pid {self.pid}) died while running this batch; "
                "it is being restarted, retry"
            ) from None
        finally:
            shm_tensors.release(block)
        if reply["kind"] != "ok":
            if reply.get("code") == OUT_OF_MEMORY:
                raise torch.cuda.OutOfMemoryError(reply["error"])
            if "traceback" in reply:
                log.error("worker process %s: %s", self.pid, reply["traceback"].rstrip())
            raise error_for(reply["code"], reply["error"], reply.get("field"))
        note_device_seconds(reply.get("device_seconds"))  # for the batcher, on this thread
        return shm_tensors.take(reply["outputs"], reply["block"], unlink=True)

    def answers_ping(self) -> bool:
        try:
            _send(self.conn, {"kind": "ping"})
            return self.conn.poll(PING_TIMEOUT_S) and _recv(self.conn)["kind"] == "pong"
        except (EOFError, OSError, ValueError):
            return False

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            _send(self.conn, {"kind": "stop"})
        self.process.join(10)
        self.kill()


class ProcessPoolRunner:
    """A `Runner` over `workers` worker processes of one package, restarted when they die."""

    def __init__(
        self,
        package: Path,
        limits: Limits,
        workers: int = 1,
        torch_threads: int = 0,
        *,
        compile: bool = False,
        on_restart: Callable[[], None] | None = None,
        batch_timeout_s: float | None = None,
        watchdog_s: float = WATCHDOG_S,
        weights_dir: Path | None = None,
        device: str = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.on_restart = on_restart
        self.batch_timeout_s = batch_timeout_s
        """A worker that has not answered a batch by then is hung: it is killed and
        replaced, and the batch fails with `DeadlineExceeded`."""
        self.compiled = compile
        self.device = Device.parse(device)
        self.precision = precision
        self.placement = Placement("process", processes=workers)
        # How every worker, first or replacement, is started (torch_threads 0: torch's).
        self._spawn = functools.partial(
            WorkerProcess, package, limits, torch_threads, compile, weights_dir, device, precision
        )
        self.manifest: Manifest = read_package(package, limits).manifest
        self._idle: queue.Queue[WorkerProcess] = queue.Queue()
        self._all: list[WorkerProcess] = []
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(workers):
            self._add(self._spawn())
        self._watchdog_s = watchdog_s
        threading.Thread(target=self._watch, daemon=True, name="torchport-watchdog").start()

    def _watch(self) -> None:
        """Every `watchdog_s`, each idle worker must answer a ping within `PING_TIMEOUT_S`;
        one that does not (stopped, deadlocked, swapped out) is replaced before a request
        meets it. A busy worker is watched by its batch's own timeout."""
        while not self._closed:
            time.sleep(self._watchdog_s)
            idle: list[WorkerProcess] = []
            with contextlib.suppress(queue.Empty):
                while True:
                    idle.append(self._idle.get_nowait())
            for worker in idle:
                if self._closed or worker.answers_ping():
                    self._idle.put(worker)
                else:
                    log.warning("worker process %s did not answer its watchdog", worker.pid)
                    self._replace(worker)

    @property
    def signature(self) -> Signature:
        return self.manifest.signature

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._all if w.alive()]

    def live_workers(self) -> int:
        return len(self.pids)

    def workers(self) -> Workers:
        pids = self.pids
        return Workers("process", len(pids), pids)

    def _add(self, worker: WorkerProcess) -> None:
        with self._lock:
            self._all.append(worker)
        self._idle.put(worker)

    def predict(self, batch: Tensors) -> Tensors:
        try:
            worker = self._idle.get(timeout=_START_TIMEOUT_S)
        except queue.Empty:
            raise Unavailable("no worker process is available") from None
        try:
            result = worker.predict(batch, self.batch_timeout_s)
        except (WorkerDied, WorkerHung):
            self._replace(worker)
            raise
        except BaseException:
            self._idle.put(worker)  # it answered: the error was the batch's, not the worker's
            raise
        self._idle.put(worker)
        return result

    def _replace(self, dead: WorkerProcess) -> None:
        with self._lock:
            if dead in self._all:
                self._all.remove(dead)
        dead.kill()
        log.warning("worker process %s died; starting another", dead.pid)
        sweep(pid=dead.pid)  # its unpacked package, and blocks it made and never handed over
        if self.on_restart is not None:
            self.on_restart()

        def restart() -> None:
            if self._closed:
                return
            try:
                self._add(self._spawn())
            except TorchportError:
                log.exception("a replacement worker process failed to start")

        threading.Thread(target=restart, daemon=True, name="torchport-restart").start()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.stop()
