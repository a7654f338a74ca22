"""MLServer 1.7 as a benchmark peer, set up by the benchmark itself.

It installs from PyPI into a separate virtual environment (`build/mlserver-venv`, with the
same local torch 2.13.0 wheel; MLServer 1.7 needs `uvloop<0.22`) and serves the same
`model.py` and weights through peers/mlserver_runtime.py, over the Open Inference
Protocol's REST and gRPC. Settings swept: `parallel_workers` (0: inference in the server
process), adaptive batching (`max_batch_size`, `max_batch_time`); debug (access) logging
off.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from benchmarks.peers import venvs

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "build" / "mlserver-venv"
PACKAGES = [
    "torch==2.13.0",
    "numpy",
    "mlserver==1.7.1",
    "uvloop<0.22",
    "safetensors",
    "tokenizers",
]


def ensure_venv() -> Path:
    """The MLServer virtual environment, made on first use."""
    return venvs.ensure(VENV, PACKAGES, "MLServer 1.7")


def start(
    model: str,
    files: Path,
    folder: Path,
    ports: tuple[int, int, int],
    *,
    workers: int,
    batch_size: int,
    max_batch_delay_ms: float,
) -> subprocess.Popen[bytes]:
    """`mlserver start` on `folder` (written here): HTTP, gRPC and metrics on `ports`,
    `workers` parallel workers (0: none), adaptive batching when `batch_size` > 1. Each
    process that runs the model gets cores ÷ workers torch threads."""
    http, grpc, metrics = ports
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "debug": False,
                "host": "127.0.0.1",
                "http_port": http,
                "grpc_port": grpc,
                "metrics_port": metrics,
                "parallel_workers": workers,
                "metrics_dir": str(folder / ".metrics"),
                "environments_dir": str(folder / ".envs"),
            }
        )
    )
    (folder / model).mkdir(exist_ok=True)
    batching = (
        {"max_batch_size": batch_size, "max_batch_time": max_batch_delay_ms / 1000}
        if batch_size > 1
        else {}
    )
    (folder / model / "model-settings.json").write_text(
        json.dumps(
            {
                "name": model,
                "implementation": "benchmarks.peers.mlserver_runtime.TorchModel",
                "parameters": {
                    "uri": str(files),
                    "extra": {"kind": model, "torch_threads": threads},
                },
                **batching,
            }
        )
    )
    log = (folder / "mlserver.out").open("wb")
    return subprocess.Popen(
        [str(VENV / "bin" / "mlserver"), "start", str(folder)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its worker processes stop with it
    )
