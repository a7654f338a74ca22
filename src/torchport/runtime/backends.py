"""Backends: where a loaded model version runs, chosen from its settings and the server's.

The package is always loaded and verified in this process first. On the `local` backend
its batches then run there on the batcher's threads (`worker_kind = "thread"`), or in
worker processes that each load it again (`"process"`); on the `ray` backend, on the
replicas of a Ray Serve deployment. Every one is a `Deployment` behind the `Runner`
interface, so the batcher and the registry never ask which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from torchport.runtime.batching import BatchPolicy
from torchport.runtime.placement import Placement, Scaling
from torchport.runtime.process_pool import ProcessPoolRunner
from torchport.runtime.runner import Deployment, LocalRunner
from torchport.runtime.workers import ThreadBudget
from torchport.settings import Limits

BackendName = Literal["local", "ray"]
PROCESS_KILL_MARGIN_S = 10.0


@dataclass(frozen=True)
class Plan:
    """How a version is served: its batching policy and where its batches run."""

    policy: BatchPolicy
    placement: Placement


class Backend:
    """Makes the `Deployment` that serves a version, from its effective settings."""

    def __init__(
        self,
        name: BackendName = "local",
        limits: Limits | None = None,
        *,
        cores: int = 1,
        torch_threads: int = 0,
        request_timeout_s: float | None = None,
        weights_dir: Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.name = name
        self.device = device
        """Where a version runs when its config and package name no device."""
        self.weights_dir = weights_dir
        """Where each weights file is kept once, mapped by every version and worker process
        that uses it (None: each maps its own unpacked copy)."""
        self.limits = limits or Limits()
        self.request_timeout_s = request_timeout_s
        """How long a batch may run (None: as long as it takes)."""
        self.torch_threads = torch_threads
        """Intra-op threads of a batch under load (0: torch's settings are left alone)."""
        self.threads = ThreadBudget(cores, torch_threads) if torch_threads else None
        """What the batches of a version that runs in this process may use."""
        self.default_workers = max(1, cores // (torch_threads or cores))
        """Workers of a version whose package and config leave the number open."""

    def plan(self, settings: Mapping[str, Any]) -> Plan:
        """The plan for a version's settings (the package's runtime defaults overridden by
        its config). On Ray the batcher keeps as many batches in flight as there may be
        replicas."""
        values = dict(settings)
        if values.get("workers") is None:
            values["workers"] = self.default_workers
        policy = BatchPolicy(**{f.name: values[f.name] for f in fields(BatchPolicy)})
        if self.name == "ray":
            scaling = Scaling.of(values, policy.workers)
            return Plan(replace(policy, workers=scaling.most), Placement("ray", scaling=scaling))
        if policy.worker_kind == "process":
            return Plan(policy, Placement("process", processes=policy.workers))
        return Plan(policy, Placement())

    def timeout_for(self, deployment: Deployment) -> float | None:
        """How long the batcher waits for a batch: a worker process is killed at
        `request_timeout_s` by its pool, and a Ray call given up by Ray, each answering
        itself, so the batcher waits a little longer for that answer; threads are waited on
        for exactly as long."""
        if self.request_timeout_s is None:
            return None
        margin = PROCESS_KILL_MARGIN_S if deployment.placement.kind != "thread" else 0.0
        return self.request_timeout_s + margin

    def threads_for(self, deployment: Deployment) -> ThreadBudget | None:
        """The torch threads the batcher sets per batch: only for batches run here (worker
        processes and replicas set their own)."""
        return self.threads if deployment.placement.kind == "thread" else None

    def deploy(
        self,
        local: LocalRunner,
        package: Path,
        model: str,
        version: int,
        placement: Placement,
        *,
        on_restart: Callable[[], None] | None = None,
    ) -> Deployment:
        """Serve the loaded `local` runner as `placement` says. For worker processes and
        Ray replicas, which load `package` themselves, `local` (which verified it) is
        closed."""
        if placement.kind == "thread":
            return local
        try:
            if placement.kind == "process":
                return ProcessPoolRunner(
                    package,
                    self.limits,
                    placement.processes,
                    self.torch_threads,
                    compile=local.compiled,
                    on_restart=on_restart,
                    batch_timeout_s=self.request_timeout_s,
                    weights_dir=self.weights_dir,
                    device=str(local.device),
                    precision=local.precision,
                )
            from torchport.runtime.ray_backend import RayServeRunner  # only with Ray

            assert placement.scaling is not None
            return RayServeRunner(
                package,
                model,
                version,
                placement.scaling,
                self.limits,
                torch_threads=self.torch_threads,
                compile=local.compiled,
                timeout_s=self.request_timeout_s,
            )
        finally:
            local.close()
