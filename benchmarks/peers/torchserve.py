"""TorchServe 0.12.0 as a benchmark peer, set up by the benchmark itself.

Its wheels install from PyPI into a separate virtual environment (`build/torchserve-venv`,
with the same local torch 2.13.0 wheel) and run on this machine's Java 17. The model is
archived with `torch-model-archiver` from the same `model.py` and weights torchport serves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from benchmarks.peers import venvs

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "build" / "torchserve-venv"
HANDLER = Path(__file__).with_name("torchserve_handler.py")
PACKAGES = [
    "torch==2.13.0",
    "numpy",
    "torchserve==0.12.0",
    "torch-model-archiver==0.12.0",
    "safetensors",
    "tokenizers",
    # What TorchServe's built-in image handlers import (the import tests compare them).
    "torchvision==0.28.0",
    "captum",
    "pillow",
    # SageMaker's PyTorch inference toolkit (its containers run it on TorchServe): the
    # SageMaker import tests compare torchport's /invocations with it.
    "sagemaker-inference==1.10.1",
    "sagemaker-pytorch-inference==2.0.25",
]


def ensure_venv() -> Path:
    """The TorchServe virtual environment, made on first use."""
    venv = venvs.ensure(VENV, PACKAGES, "TorchServe 0.12.0")
    site = next((venv / "lib").glob("python3*/site-packages"))
    shim = Path(__file__).with_name("torchvision_shim.py")
    installed = site / shim.name
    if not installed.exists() or installed.read_bytes() != shim.read_bytes():
        for name, text in ((shim.name, shim.read_text()),
                           ("torchvision_shim.pth", "import torchvision_shim\n")):  # fmt: skip
            staged = site / f".{name}.{os.getpid()}"
            staged.write_text(text)
            os.replace(staged, site / name)  # whole, whoever writes it
    return venv


def archive(model: str, files: Path, store: Path) -> Path:
    """`MODEL.mar` in `store`, from the model's files (model.py, weights, tokenizer)."""
    extra = [files / "model.py", files / "weights.safetensors"]
    if (files / "tokenizer.json").exists():
        extra.append(files / "tokenizer.json")
    store.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            str(VENV / "bin" / "torch-model-archiver"),
            "--model-name", model, "--version", "1.0",
            "--handler", str(HANDLER),
            "--extra-files", ",".join(map(str, extra)),
            "--export-path", str(store), "--force",
        ],
        check=True,
    )  # fmt: skip
    return store / f"{model}.mar"


QUIET_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="warn"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""
"""TorchServe's logging at WARN, no access log: its stock INFO logging (a line per
request) costs it a fifth to a third of its throughput (measured beside quiet)."""


def start(
    model: str,
    store: Path,
    ports: tuple[int, int, int],
    *,
    batch_size: int,
    workers: int = 2,
    max_batch_delay_ms: int = 5,
    quiet: bool = False,
    torch_threads: int = 0,
) -> subprocess.Popen[bytes]:
    """TorchServe in the foreground (its own process group), serving `model`; `quiet`:
    WARN-level logging; `torch_threads`: torch.set_num_threads in each worker (0: as
    TorchServe leaves it)."""
    inference, management, metrics = ports
    config = store / f"config-{inference}.properties"
    models = (
        f'{{"{model}": {{"1.0": {{"defaultVersion": true, "marName": "{model}.mar", '
        f'"minWorkers": {workers}, "maxWorkers": {workers}, "batchSize": {batch_size}, '
        f'"maxBatchDelay": {max_batch_delay_ms}, "responseTimeout": 120}}}}}}'
    )
    extra = []
    if quiet:
        log4j = store / "log4j2-quiet.xml"
        log4j.write_text(QUIET_LOG4J2)
        extra.append(f"vmargs=-Dlog4j.configurationFile=file://{log4j}")
    config.write_text(
        "\n".join(
            [
                f"inference_address=http://127.0.0.1:{inference}",
                f"management_address=http://127.0.0.1:{management}",
                f"metrics_address=http://127.0.0.1:{metrics}",
                "disable_token_authorization=true",
                "enable_model_api=true",
                "install_py_dep_per_model=false",
                f"model_store={store}",
                f"load_models={model}.mar",
                f"models={models}",
                "disable_system_metrics=true",
                *extra,
            ]
        )
        + "\n"
    )
    env = {
        **os.environ,
        "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}",
        "LOG_LOCATION": str(store / "logs"),
        "BENCH_TORCH_THREADS": str(torch_threads),
    }
    return subprocess.Popen(
        [str(VENV / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
         "--model-store", str(store), "--ts-config", str(config), "--disable-token-auth"],
        env=env,
        cwd=store,
        stdout=(store / f"torchserve-{inference}.out").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the JVM and its Python workers, all gone
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
