"""TorchServe's documented management calls answer on torchport's compatibility port as on
a real TorchServe 0.12: the same calls against both, side by side. (A module of its own:
two TorchServes at once would share their workers' socket names.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from tests.e2e.server import ServerProcess, free_port
from tests.e2e.torchserve import TorchServeProcess
from tests.migrate.archives import archive, build_all

STEPS: list[tuple[str, str, dict[str, str]]] = [
    ("POST", "/models", {"url": "seq.mar", "initial_workers": "1", "synchronous": "true"}),
    ("POST", "/models", {"url": "seq.mar", "initial_workers": "1", "synchronous": "true"}),
    ("POST", "/models", {"url": "seq-2.0.mar", "synchronous": "true"}),
    ("PUT", "/models/seq/2.0", {"min_worker": "1", "synchronous": "true"}),
    ("PUT", "/models/seq/9.0/set-default", {}),
    ("DELETE", "/models/seq/1.0", {}),
    ("PUT", "/models/seq/2.0/set-default", {}),
    ("DELETE", "/models/seq/1.0", {}),
    ("DELETE", "/models/seq", {}),
    ("GET", "/models/seq", {}),
    ("POST", "/models", {"url": "missing.mar"}),
    ("POST", "/models", {"url": "../marstore/seq.mar"}),
]
"""TorchServe's documented management calls (docs/management_api.md), in the order a
deployment script makes them: register, register a second version, scale it, set it as
the default, unregister both — and the mistakes such a script meets."""


def test_torchserves_management_calls_answer_the_same_on_the_compatibility_port(
    tmp_path: Path,
) -> None:
    archives = build_all(tmp_path / "src", tmp_path / "marstore")
    store = archives["rows"].parent
    src = tmp_path / "src"
    for version, name in (("1.0", "seq.mar"), ("2.0", "seq-2.0.mar")):
        made = archive(tmp_path / version, "seq", version=version,
                       handler=str(src / "rows_handler.py"), serialized=src / "tiny.pt",
                       model_file=src / "model.py", extra=[src / "helpers.py"])  # fmt: skip
        shutil.copy(made, store / name)
    (tmp_path / "ts").mkdir()
    ts = TorchServeProcess(store, tmp_path / "ts").start()
    ours = ServerProcess(
        tmp_path / "tpstore", [], TORCHPORT_TORCHSERVE_MANAGEMENT_PORT=str(free_port()),
        TORCHPORT_MODEL_STORE=str(store),
    )  # fmt: skip
    ours_port = int(ours.env["TORCHPORT_TORCHSERVE_MANAGEMENT_PORT"])
    ours.start()
    try:
        for method, path, params in STEPS:
            theirs = httpx.request(method, f"{ts.management_url}{path}", params=params, timeout=120)
            mine = httpx.request(method, f"http://127.0.0.1:{ours_port}{path}", params=params,
                                 headers=ours.auth, timeout=120)  # fmt: skip
            step = f"{method} {path} {params}"
            assert mine.status_code == theirs.status_code, (step, theirs.text, mine.text)
            expected, got = theirs.json(), mine.json()
            if isinstance(expected, dict) and "status" in expected:
                assert got == expected, step
            elif isinstance(expected, dict):  # an error: its code and type
                assert (got["code"], got["type"]) == (expected["code"], expected["type"]), step
    finally:
        ts.stop()
        ours.stop()
