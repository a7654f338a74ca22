"""A real S3 API on loopback for the tests: moto's server, run in its own process.

moto checks a conditional write's precondition and then writes, in two steps; S3 does
both at once. This server serializes writes (PUT, POST, DELETE) so that its conditional
writes are atomic as S3's are, which is what the racing-replica tests rely on. Reads run
concurrently. `--slow-blobs BPS` drips the first download of each package at that many
bytes a second (a replica killed in the middle of one; its retry then runs at full speed).

    python tests/s3server.py --port 9000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Serialized:
    """Writes one at a time; each blob's first read dripped when asked."""

    def __init__(self, app: WSGIApp, slow_blobs: int | None) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.slow_blobs = slow_blobs
        self.dripped: set[str] = set()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = environ["REQUEST_METHOD"]
        if method in ("PUT", "POST", "DELETE"):
            with self.lock:
                return list(self.app(environ, start_response))
        body = self.app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        if self.slow_blobs and method == "GET" and "/blobs/" in path:
            with self.lock:
                first = path not in self.dripped
                self.dripped.add(path)
            if first:
                return self._drip(b"".join(body), self.slow_blobs)
        return body

    @staticmethod
    def _drip(data: bytes, per_second: int) -> Iterator[bytes]:
        step = max(1, per_second // 20)
        for start in range(0, len(data), step):
            yield data[start : start + step]
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow-blobs", type=int, default=None)
    args = parser.parse_args()
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        "127.0.0.1", args.port, Serialized(app, args.slow_blobs), threaded=True, use_reloader=False
    )


class S3Server:
    """The server above in a child process; `endpoint` is its URL."""

    def __init__(self, slow_blobs: int | None = None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, __file__, "--port", str(self.port)]
        if slow_blobs:
            command += ["--slow-blobs", str(slow_blobs)]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=s3_env()
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the S3 test server did not start")
            time.sleep(0.05)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def s3_env() -> dict[str, str]:
    """The environment a torchport process needs to reach this server's buckets."""
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }


if __name__ == "__main__":
    main()
