"""Server memory with many models loaded: 20 copies of `mlp` and 3 of `minilm`.

    make bench    # or: .venv/bin/python benchmarks/memory.py

Starts `torchport serve` on an empty store, uploads the copies through the management API
(each is verified, registered as its own model and loaded), and reads the server's
resident memory (VmRSS) before and after. Written to benchmarks/results/memory.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving import free_port, rss_bytes, wait_ready  # noqa: E402

TOKEN = "benchmark-token-0123456789"


def upload(url: str, package: Path, name: str) -> None:
    request = urllib.request.Request(
        f"{url}/models/{name}",
        data=package.read_bytes(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.status == 201


def main() -> None:
    examples = ROOT / "build" / "examples"
    from torchport.examples import build_examples

    missing = tuple(n for n in ("mlp", "minilm") if not (examples / f"{n}.tpa").exists())
    if missing:
        build_examples(examples, missing)
    with tempfile.TemporaryDirectory() as tmp:
        http, mgmt = free_port(), free_port()
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "torchport"), "serve", "--store", f"{tmp}/store",
             "--http-port", str(http), "--management-port", str(mgmt)],
            env={**os.environ, "TORCHPORT_TOKEN": TOKEN},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_ready(proc, f"http://127.0.0.1:{http}/v2/health/ready", started)
            empty = rss_bytes(proc.pid)
            for i in range(20):
                upload(f"http://127.0.0.1:{mgmt}", examples / "mlp.tpa", f"mlp-{i + 1}")
            for i in range(3):
                upload(f"http://127.0.0.1:{mgmt}", examples / "minilm.tpa", f"minilm-{i + 1}")
            with urllib.request.urlopen(
                urllib.request.Request(
                    f"http://127.0.0.1:{mgmt}/v2/repository/index",
                    method="POST",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
            ) as response:
                index = json.loads(response.read())
            ready = sum(item["state"] == "READY" for item in index)
            loaded = rss_bytes(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    result = {
        "empty_server_mb": empty / 2**20,
        "with_20_mlp_3_minilm_mb": loaded / 2**20,
        "versions_ready": ready,
    }
    out = ROOT / "benchmarks" / "results" / "memory.json"
    out.write_text(json.dumps(result, indent=2))
    print(
        f"server RSS: {result['empty_server_mb']:.0f} MiB empty, "
        f"{result['with_20_mlp_3_minilm_mb']:.0f} MiB with 20 mlp + 3 minilm loaded "
        f"({ready} versions READY)"
    )


if __name__ == "__main__":
    main()
