"""A real TorchServe 0.12 (its own venv, this machine's Java 17) on free loopback ports,
to compare torchport's answers with."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from benchmarks.peers.torchserve import ensure_venv

from tests.e2e.server import free_port


class TorchServeProcess:
    def __init__(self, model_store: Path, workdir: Path) -> None:
        self.model_store = model_store
        self.workdir = workdir
        self.inference_port = free_port()
        self.management_port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def start(self, timeout: float = 120.0) -> TorchServeProcess:
        if shutil.which("java") is None:
            pytest.fail("TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)")
        venv = ensure_venv()
        tmp = self.workdir / "tmp"
        config = self.workdir / "config.properties"
        config.write_text(
            "\n".join([
                f"inference_address={self.url}",
                f"management_address={self.management_url}",
                f"metrics_address=http://127.0.0.1:{self.metrics_port}",
                "disable_token_authorization=true",
                "enable_model_api=true",
                "install_py_dep_per_model=false",
                f"model_store={self.model_store}",
                "disable_system_metrics=true",
                f"vmargs=-Djava.io.tmpdir={tmp}",
            ]) + "\n"
        )  # fmt: skip
        # Its pid file and its workers' sockets go under the temporary directory: one of
        # its own, so that one TorchServe stopping never blocks the next from starting.
        tmp.mkdir(exist_ok=True)
        env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
               "LOG_LOCATION": str(self.workdir / "logs"), "TMPDIR": str(tmp)}  # fmt: skip
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
             "--model-store", str(self.model_store), "--ts-config", str(config),
             "--disable-token-auth"],
            env=env, cwd=self.workdir, start_new_session=True,
            stdout=(self.workdir / "torchserve.out").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"TorchServe did not start: {(self.workdir / 'torchserve.out').read_text()}")

    def register(self, mar: str, **params: str | int) -> None:
        query = {"url": mar, "initial_workers": 1, "synchronous": "true", **params}
        response = httpx.post(f"{self.management_url}/models", params=query, timeout=120)
        assert response.status_code == 200, response.text

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
