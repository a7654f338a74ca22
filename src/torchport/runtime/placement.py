"""Where a model version's batches run, as plain data: threads of this process, worker
processes, or Ray Serve replicas; and what runs there now."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["thread", "process", "ray"]


@dataclass(frozen=True)
class Scaling:
    """How many replicas a version runs: `replicas`, or, with `max_replicas` above it, a
    range Ray Serve's autoscaler moves in with load (from the package's runtime config:
    `workers`, `max_workers`, `scale_up_delay_s`, `scale_down_delay_s`)."""

    replicas: int
    max_replicas: int | None = None
    scale_up_delay_s: float = 10.0
    scale_down_delay_s: float = 300.0

    @classmethod
    def of(cls, settings: Mapping[str, Any], workers: int) -> Scaling:
        most = settings.get("max_workers")
        return cls(
            workers,
            max(int(most), workers) if most else None,
            float(settings.get("scale_up_delay_s", cls.scale_up_delay_s)),
            float(settings.get("scale_down_delay_s", cls.scale_down_delay_s)),
        )

    @property
    def autoscaled(self) -> bool:
        return self.max_replicas is not None and self.max_replicas > self.replicas

    @property
    def most(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas

    def serve_options(self, target_ongoing: float) -> dict[str, Any]:
        """Ray Serve deployment options: a fixed `num_replicas`, or an autoscaling config
        aiming at `target_ongoing` requests in flight per replica."""
        if not self.autoscaled:
            return {"num_replicas": self.replicas}
        return {
            "autoscaling_config": {
                "min_replicas": self.replicas,
                "initial_replicas": self.replicas,
                "max_replicas": self.most,
                "target_ongoing_requests": target_ongoing,
                "upscale_delay_s": self.scale_up_delay_s,
                "downscale_delay_s": self.scale_down_delay_s,
                # React within seconds: Ray's defaults report every 10 s over 30 s.
                "metrics_interval_s": 1.0,
                "look_back_period_s": 5.0,
            }
        }


@dataclass(frozen=True)
class Placement:
    """Where a version runs. A config change that keeps the placement is applied to live
    traffic as it is; another placement loads the version anew beside the old one."""

    kind: Kind = "thread"
    processes: int = 0
    """Worker processes (`process`); threads change live, so they are not counted here."""
    scaling: Scaling | None = None
    """Ray Serve replicas (`ray`)."""


@dataclass(frozen=True)
class Workers:
    """What runs a version's batches now."""

    kind: Kind
    count: int | None
    """Live workers; None: threads of this process, as many as the batcher runs."""
    pids: list[int] = field(default_factory=list)
    least: int | None = None
    """An autoscaled range (Ray), else None."""
    most: int | None = None
