"""From another server's model archive to answers: `torchport import`, then a fresh
`torchport serve PACKAGE --microservice` to its first answer.

    .venv/bin/python benchmarks/import_to_serving.py [--repeat 3]

The archives are the import tests' own: TorchServe `.mar` files made by the real
torch-model-archiver (`rows`: eager model + a BaseHandler subclass; `shout`: TorchScript +
a module-level handle; `vision`: TorchScript + the built-in image_classifier) and SageMaker
`model.tar.gz` files (`sagemaker-four`: all four functions; `sagemaker-none`: no script).
Each step is a fresh process, timed by wall clock; medians over `--repeat` runs; results in
benchmarks/results/import_to_serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.migrate.archives import build_all, png  # noqa: E402
from tests.migrate.test_sagemaker import ALL_FOUR, _model_pt, _tar  # noqa: E402

from benchmarks.serve_ready import free_port, until_ok  # noqa: E402

REQUESTS = {
    "rows": ("/predictions/rows", b'{"rows": [1, 2, 3, 4]}', "application/json"),
    "shout": ("/predictions/shout", b"hello", "text/plain"),
    "vision": ("/predictions/vision", None, "image/png"),
    "sagemaker-four": ("/invocations", b'{"inputs": [[1, 2, 3, 4]]}', "application/json"),
    "sagemaker-none": ("/invocations", b"[[1, 2, 3, 4]]", "application/json"),
}


def archives(root: Path) -> dict[str, Path]:
    built = build_all(root / "src", root / "mar")
    model = _model_pt()
    return {
        **{name: built[name] for name in ("rows", "shout", "vision")},
        "sagemaker-four": _tar(root / "sagemaker-four.tar.gz",
                               {"model.pt": model, "code/inference.py": ALL_FOUR.encode()}),
        "sagemaker-none": _tar(root / "sagemaker-none.tar.gz", {"model.pt": model}),
    }  # fmt: skip


def timed_import(archive: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "torchport", "import", str(archive), "-o", str(out),
         "--name", out.stem],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def first_answer(package: Path, name: str) -> float:
    path, body, content_type = REQUESTS[name]
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchport", "serve", str(package), "--microservice",
         "--grpc-port", str(free_port())],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    data = body if body is not None else png()
    return until_ok(
        proc,
        lambda: urllib.request.Request(
            f"http://127.0.0.1:{port}{path}",
            data=data,
            headers={"Content-Type": content_type},
            method="POST",
        ),
        started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/import_to_serving.json"
    )
    args = parser.parse_args()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="torchport-import-bench-") as tmp:
        made = archives(Path(tmp))
        for name, archive in made.items():
            imports, answers = [], []
            for _ in range(args.repeat):
                package = Path(tmp) / f"{name.replace('-', '_')}.tpa"
                package.unlink(missing_ok=True)
                imports.append(timed_import(archive, package))
                answers.append(first_answer(package, name))
            results[name] = {
                "archive": archive.name,
                "import_s": round(statistics.median(imports), 2),
                "serve_to_first_answer_s": round(statistics.median(answers), 2),
                "total_s": round(statistics.median(imports) + statistics.median(answers), 2),
                "runs": args.repeat,
            }
            row = results[name]
            print(
                f"{name:16} import {row['import_s']:5.2f} s, serve to first answer "
                f"{row['serve_to_first_answer_s']:5.2f} s, total {row['total_s']:5.2f} s"
            )
    args.out.write_text(
        json.dumps({"machine": os.uname().machine, "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
