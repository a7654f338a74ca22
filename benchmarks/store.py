"""The store on object storage against the embedded one, and replicas following it.

    .venv/bin/python benchmarks/store.py [--repeat 30] [--promotes 10]

1. Store operations, the same calls on `SQLiteStore` (a local directory) and `S3Store`
   (moto's S3 server on loopback, `tests/s3server.py`), interleaved: upload (`add_version`
   of the `mlp` package), `promote`, `rollback`, `get_model`, `list_models` over 20 models,
   and `package_path` of a version not yet in the replica's cache (a download, verified).
   Medians and p90 in milliseconds. On real S3 each request adds its network round trip
   (typically 10-30 ms in one region); the loopback server shows torchport's own cost and
   the number of requests a call makes.
2. Two `torchport serve` replicas on one bucket: `--promotes` times, a promote through
   replica A (alternating two versions of `mlp`), then the time until replica B answers
   with the new version (`model_version` of its answers, polled every 20 ms). Default
   `store_poll_s` (2 s).

Results in benchmarks/results/store.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.server import ServerProcess, oip_body, upload  # noqa: E402
from tests.s3server import S3Server, s3_env  # noqa: E402

from torchport.examples import build_examples  # noqa: E402
from torchport.store import ModelStore, open_store  # noqa: E402


def ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2),
    }


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def operations(stores: dict[str, Callable[[], ModelStore]], package: Path, repeat: int) -> Any:
    opened = {kind: make() for kind, make in stores.items()}
    for store in opened.values():
        for i in range(20):
            store.add_version(f"m{i:02d}", package)
        store.add_version("mlp", package)
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in opened}
    for _ in range(repeat):
        for kind, store in opened.items():  # interleaved: the same moment for both
            s = samples[kind]
            s.setdefault("upload", []).append(
                timed(lambda st=store: st.add_version("mlp", package))
            )
            newest = store.get_model("mlp").versions[-1].version
            s.setdefault("promote", []).append(
                timed(lambda st=store, v=newest: st.promote("mlp", v))
            )
            s.setdefault("rollback", []).append(timed(lambda st=store: st.rollback("mlp")))
            s.setdefault("get_model", []).append(timed(lambda st=store: st.get_model("mlp")))
            s.setdefault("list_models (21)", []).append(timed(store.list_models))
    # A download into a cold cache: a fresh replica each time.
    cold: list[float] = []
    for _ in range(min(repeat, 10)):
        fresh = stores["s3"]()
        info = fresh.get_version("mlp", 1)
        cold.append(timed(lambda f=fresh, i=info: f.package_path(i)))
    samples["s3"]["package_path (cold cache)"] = cold
    return {kind: {op: ms(v) for op, v in ops.items()} for kind, ops in samples.items()}


def follow(url: str, tmp: Path, package: Path, promotes: int) -> dict[str, Any]:
    a = ServerProcess(tmp / "a" / "cache", location=url)
    b = ServerProcess(tmp / "b" / "cache", location=url)
    for server in (a, b):
        server.store.parent.mkdir(parents=True)
        server.start()
    try:
        upload(a, package, "mlp")
        upload(a, package, "mlp")
        x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
        body = oip_body("input", x)

        def served_by(version: int) -> bool:
            answer = httpx.post(f"{b.url}/v2/models/mlp/infer", json=body, timeout=10)
            return answer.status_code == 200 and answer.json()["model_version"] == str(version)

        while not served_by(1):
            time.sleep(0.05)
        seconds = []
        for i in range(promotes):
            version = 2 if i % 2 == 0 else 1
            time.sleep(0.7 * (i % 3))  # promotes land at different points of B's poll
            answer = httpx.put(
                f"{a.management_url}/models/mlp/default",
                json={"version": version},
                headers=a.auth,
                timeout=60,
            )
            answer.raise_for_status()
            started = time.monotonic()
            while not served_by(version):
                time.sleep(0.02)
            seconds.append(time.monotonic() - started)
        return {
            "promotes": promotes,
            "median_s": round(statistics.median(seconds), 2),
            "max_s": round(max(seconds), 2),
            "all_s": [round(s, 2) for s in seconds],
        }
    finally:
        a.stop()
        b.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--promotes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/store.json")
    args = parser.parse_args()
    server = S3Server()
    os.environ.update({k: v for k, v in s3_env().items() if k.startswith("AWS_")})
    os.environ["AWS_ENDPOINT_URL_S3"] = server.endpoint
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            package = build_examples(tmp / "examples", ("mlp",))[0].path
            package_bytes = package.stat().st_size
            bucket = server.bucket("bench-" + os.urandom(4).hex())
            count = iter(range(1000))
            stores: dict[str, Callable[[], ModelStore]] = {
                "sqlite": lambda: open_store(tmp / "local"),
                "s3": lambda: open_store(
                    f"s3://{bucket}/ops", cache_dir=tmp / f"cache-{next(count)}"
                ),
            }
            ops = operations(stores, package, args.repeat)
            followed = follow(f"s3://{bucket}/follow", tmp, package, args.promotes)
    finally:
        server.stop()
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "package_bytes": package_bytes,
        "operations": ops,
        "promote_to_other_replica": followed,
        "command": "benchmarks/store.py " + " ".join(sys.argv[1:]),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'operation':28} {'sqlite ms':>12} {'s3 ms':>12}")
    for op in ops["s3"]:
        local = ops["sqlite"].get(op, {}).get("median_ms", "-")
        print(f"{op:28} {local!s:>12} {ops['s3'][op]['median_ms']!s:>12}")
    print(
        f"promote on A → served by B: median {followed['median_s']} s, "
        f"max {followed['max_s']} s over {followed['promotes']}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
