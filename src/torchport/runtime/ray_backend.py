"""The Ray Serve backend: each model version runs as a Ray Serve deployment whose replicas
load the same package, with the same handler, as the local server; torchport stays the
front end (protocols, batching, routing, management) and reaches a version through a
`Runner` that sends each batch to the deployment. Ray places and restarts the replicas.

Ray is optional (`pip install 'torchport[ray]'`): this module is imported only when the
server runs with `backend = "ray"`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError

from torchport.archive import Manifest, read_package
from torchport.errors import (
    DeadlineExceeded,
    ModelLoadError,
    Overloaded,
    TorchportError,
    Unavailable,
)
from torchport.runtime.placement import Placement, Scaling, Workers
from torchport.runtime.runner import LocalRunner, open_runner
from torchport.scratch import remove, scratch_dir
from torchport.settings import Limits
from torchport.types import Signature, Tensors

T = TypeVar("T")

log = logging.getLogger("torchport.ray")

REQUEST_TIMEOUT_S = 300.0
DEPLOY_TIMEOUT_S = 300.0
LOCAL_CPU_SHARES = 8


class Replica:
    """One replica of a version: the package unpacked and loaded in a Ray worker process."""

    def __init__(self, package: bytes, torch_threads: int, compile: bool) -> None:
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self._dir = scratch_dir("replica")
        weakref.finalize(self, remove, self._dir)
        path = self._dir / "package.tpa"
        path.write_bytes(package)
        self.runner: LocalRunner = open_runner(path, compile=compile)

    async def __call__(self, batch: Tensors) -> Tensors:
        # Run inline on the replica's user-code loop: a replica runs one batch at a time,
        # and a sync method would cost a hop through Serve's thread pool (~2 ms a call).
        return self.runner.predict(batch)

    def pid(self) -> int:
        return os.getpid()


def connect(address: str | None, cores: int = 1) -> bool:
    """Join the Ray cluster at `address` (`auto`, `ray://host:10001`), or start a local
    one bound to 127.0.0.1 with no dashboard; then Serve, without its HTTP proxy (torchport
    is the front end). Returns whether a local Ray was started (and so is ours to stop).

    A local Ray counts each core LOCAL_CPU_SHARES times: the replicas of every loaded
    version must fit on this one machine, which they share as the local backend's
    versions share its cores. On a cluster a replica reserves its torch threads' CPUs."""
    started = False
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no INFO line per deployment
    if not ray.is_initialized():
        quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                num_cpus=cores * LOCAL_CPU_SHARES,
                **quiet,
            )
            started = True
    serve.start(http_options={"location": "NoServer"})
    return started


def disconnect(started: bool) -> None:
    """Stop the local Ray this process started (its Serve applications with it)."""
    if started:
        ray.shutdown()


def app_name(model: str, version: int) -> str:
    """A Serve application name for one load of a version: a reload (new replica count,
    compiled or not) deploys beside the old one before the swap, so each load is unique."""
    return f"torchport-{model}-v{version}-{secrets.token_hex(3)}"


class RayServeRunner:
    """A `Runner` of one package whose batches run on a Ray Serve deployment of it."""

    def __init__(
        self,
        package: Path,
        model: str,
        version: int,
        scaling: Scaling,
        limits: Limits | None = None,
        *,
        torch_threads: int = 1,
        compile: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        self.manifest: Manifest = read_package(package, limits).manifest
        self.timeout_s = timeout_s or REQUEST_TIMEOUT_S
        """How long a batch may take, its wait for a free replica included."""
        self.name = app_name(model, version)
        self.scaling = scaling
        self.compiled = compile
        self.placement = Placement("ray", scaling=scaling)
        # Batches are already formed by torchport, one per replica at a time. Autoscaled,
        # torchport keeps up to `most` batches in flight: those waiting in Ray's router
        # for a free replica are the load Ray's autoscaler sees (one batch per replica).
        deployment = _racing_ray(
            lambda: serve.deployment(
                name=self.name,
                ray_actor_options={"num_cpus": max(1, torch_threads)},
                max_ongoing_requests=1 if scaling.autoscaled else 2,
                **scaling.serve_options(target_ongoing=1),
            )(Replica)
        )
        app = deployment.bind(package.read_bytes(), torch_threads, compile)
        _deploy(app, self.name, scaling.replicas)
        self._handle = serve.get_app_handle(self.name)

    @property
    def signature(self) -> Signature:
        return self.manifest.signature

    @property
    def replicas(self) -> int:
        """Replicas running now (autoscaled: somewhere between the scaling's bounds)."""
        try:
            app = serve.status().applications[self.name]
            states = app.deployments[self.name].replica_states
        except Exception:  # the cluster is going away, or the app is being replaced
            return 0
        return sum(n for state, n in states.items() if state == "RUNNING")

    @property
    def pids(self) -> list[int]:
        """Process ids of the replicas (those that answer now)."""
        seen: set[int] = set()
        for _ in range(4 * self.scaling.most):  # requests spread: a few reach them all
            try:
                seen.add(int(self._handle.pid.remote().result(timeout_s=10)))
            except Exception:  # a replica restarting answers later
                break
        return sorted(seen)

    def live_workers(self) -> None:
        return None  # asking Ray is too slow for a metrics scrape: the batches in flight

    def workers(self) -> Workers:
        """The replicas running now, within their range."""
        return Workers("ray", self.replicas, self.pids, self.scaling.replicas, self.scaling.most)

    def predict(self, batch: Tensors) -> Tensors:
        try:
            outputs: Tensors = self._handle.remote(batch).result(timeout_s=self.timeout_s)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, TorchportError):
                raise cause from None
            raise TorchportError(f"the model failed on a Ray replica: {_first_line(exc)}") from exc
        except RayActorError as exc:
            raise Unavailable(
                f"the Ray replica running this batch died ({_first_line(exc)}); retry"
            ) from exc
        except BackPressureError as exc:
            raise Overloaded(f"every Ray replica of {self.name} is busy") from exc
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"no Ray replica of {self.name} answered within request_timeout_s "
                f"({self.timeout_s:g} s)"
            ) from exc
        return outputs

    def close(self) -> None:
        try:
            serve.delete(self.name, _blocking=False)
        except Exception:  # the cluster may already be gone at shutdown
            log.debug("deleting %s failed", self.name, exc_info=True)


def _deploy(app: Any, name: str, replicas: int) -> None:
    """`serve.run`, bounded: a cluster without room for the replicas would wait forever."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _racing_ray(lambda: serve.run(app, name=name, route_prefix=None))
        except BaseException as exc:  # reported in the caller's thread
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"deploy-{name}", daemon=True).start()
    if not done.wait(DEPLOY_TIMEOUT_S):
        with contextlib.suppress(Exception):
            serve.delete(name, _blocking=False)
        raise ModelLoadError(
            f"Ray Serve could not start {replicas} replica(s) of {name} in "
            f"{DEPLOY_TIMEOUT_S:.0f} s: is there room (CPUs) for them in the cluster?"
        )
    if failure:
        raise ModelLoadError(f"Ray Serve failed to deploy {name}: {_first_line(failure[0])}")


def _racing_ray(call: Callable[[], T]) -> T:
    """`call` into Ray Serve, again when it trips on Ray's own race: building a deployment's
    config registers a module for pickling by value and unregisters it after, in a set
    shared by the process's threads, so two builds at once can find it gone (ValueError
    "... is not registered for pickle by value")."""
    for attempt in range(5):
        try:
            return call()
        except ValueError as exc:
            if "registered for pickle by value" not in str(exc) or attempt == 4:
                raise
            log.debug("Ray Serve's pickling registry raced; calling again")
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
