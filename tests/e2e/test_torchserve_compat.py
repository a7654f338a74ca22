"""Imported `.mar` archives answer on torchport as TorchServe 0.12 answers them: the same
archives served by a real TorchServe and by a real `torchport serve`, the same requests,
equal statuses and bodies — one request at a time and batched."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import ServerProcess
from tests.e2e.torchserve import TorchServeProcess
from tests.migrate.archives import build_all, png
from torchport.migrate import import_mar

BATCHED = {"batch_size": 4, "max_batch_delay": 1000}
"""TorchServe's registration settings for `rows4`; torchport gets the same from the
archive's model-config.yaml."""


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compat")
    built = build_all(root / "src", root / "marstore")
    # The same eager model and handler, batched: TorchServe registers it with BATCHED.
    config = root / "src" / "model-config.yaml"
    config.write_text("batchSize: 4\nmaxBatchDelay: 1000\n")
    from tests.migrate.archives import archive

    built["rows4"] = archive(
        root / "marstore", "rows4", handler=str(root / "src" / "rows_handler.py"),
        serialized=root / "src" / "tiny.pt", model_file=root / "src" / "model.py",
        extra=[root / "src" / "helpers.py"], config=config,
    )  # fmt: skip
    return built


@pytest.fixture(scope="module")
def torchserve(
    archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    ts = TorchServeProcess(archives["rows"].parent, tmp_path_factory.mktemp("torchserve"))
    ts.start()
    try:
        for name in ("rows", "shout", "echo", "vision"):
            ts.register(f"{name}.mar")
        ts.register("rows4.mar", **BATCHED)
        yield ts.url
    finally:
        ts.stop()


@pytest.fixture(scope="module")
def torchport(archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    out = tmp_path_factory.mktemp("imported")
    packages = [import_mar(mar, out / f"{name}.tpa").path for name, mar in archives.items()]
    server = ServerProcess(out / "store", packages).start()
    try:
        yield server.url
    finally:
        server.stop()


def _both(
    torchserve: str, torchport: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    return (
        httpx.post(f"{torchserve}{path}", content=body, headers=headers, timeout=60),
        httpx.post(f"{torchport}{path}", content=body, headers=headers, timeout=60),
    )


JSON = {"content-type": "application/json"}
CASES = [
    ("/predictions/rows", b'{"rows": [1, 2, 3, 4]}', JSON),
    ("/predictions/rows", b'{"rows": [0.5, -1, 2, 8]}', JSON),
    ("/predictions/rows", b"[4, 3, 2, 1]", JSON),
    ("/predictions/rows", b'{"x": 1}', JSON),  # the handler's own 422
    ("/predictions/rows", b'{"rows": [1, 2]}', JSON),  # the model fails: 503
    ("/predictions/rows", b'{"explode": true}', JSON),  # PredictionException(418)
    ("/predictions/rows", b"not json", JSON),
    ("/predictions/shout", b"hello", {"content-type": "text/plain", "x-tag": "t7"}),
    ("/predictions/shout", b"\xff\xfe", {"content-type": "application/octet-stream"}),
    # A version as TorchServe names it: the archive's own version.
    ("/predictions/shout/2.0", b"pinned", {"content-type": "text/plain"}),
    # What a handler gets from forms (`curl -F`, `curl -d`) and other bodies.
    (
        "/predictions/echo",
        b'--XyZ\r\nContent-Disposition: form-data; name="data"; filename="f.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\nabc\r\n--XyZ\r\n"
        b'Content-Disposition: form-data; name="name"\r\n\r\njoe\r\n--XyZ--\r\n',
        {"content-type": "multipart/form-data; boundary=XyZ"},
    ),
    (
        "/predictions/echo",
        b"a=1&b=two%20words",
        {"content-type": "application/x-www-form-urlencoded"},
    ),
    ("/predictions/echo", b'{"k": [1, 2]}', JSON),
    ("/predictions/echo", b'{"k": 3}', {"content-type": "application/json; charset=utf-8"}),
    ("/predictions/echo", b'{"k": 4}', {"content-type": "Application/JSON"}),
    ("/predictions/echo", b"plain text", {"content-type": "text/plain; charset=utf-8"}),
    ("/predictions/echo", b"raw", {"content-type": "application/octet-stream"}),
]


@pytest.mark.parametrize(("path", "body", "headers"), CASES)
def test_each_request_answers_as_torchserve_does(
    torchserve: str, torchport: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    theirs, ours = _both(torchserve, torchport, path, body, headers)
    assert ours.status_code == theirs.status_code, (theirs.text, ours.text)
    assert ours.content == theirs.content
    assert ours.headers.get("content-type") == theirs.headers.get("content-type")


def test_the_builtin_image_classifier_answers_as_torchserves(
    torchserve: str, torchport: str
) -> None:
    for seed in range(3):
        image = png(width=320 + 40 * seed, height=240, seed=seed)
        theirs, ours = _both(torchserve, torchport, "/predictions/vision", image, {})
        assert (ours.status_code, theirs.status_code) == (200, 200)
        expected, got = json.loads(theirs.content), json.loads(ours.content)
        assert list(got) == list(expected)  # the same classes, in the same order
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_a_batch_reaches_the_handler_together_and_errors_stay_per_request(
    torchserve: str, torchport: str
) -> None:
    # The first request holds the worker a moment, so the other three meet in one batch.
    first = b'{"rows": [1, 1, 1, 1], "slow": 0.5}'
    rest = [b'{"x": 1}', b'{"rows": [2, 0, 0, 1]}', b"[0, 0, 0, 1]"]

    def send(url: str) -> list[tuple[int, dict[str, object]]]:
        # One client (a new one per request spends tens of ms on its TLS context) and a
        # thread per request, started at once.
        with httpx.Client(timeout=60) as client:

            def one(body: bytes) -> httpx.Response:
                return client.post(f"{url}/predictions/rows4", content=body, headers=JSON)

            head = ThreadPoolExecutor(1).submit(one, first)
            time.sleep(0.1)
            with ThreadPoolExecutor(len(rest)) as pool:
                tail = [pool.submit(one, body) for body in rest]
            answers = [head.result(), *(t.result() for t in tail)]
        return [(a.status_code, json.loads(a.content)) for a in answers]

    theirs, ours = send(torchserve), send(torchport)
    assert [status for status, _ in ours] == [200, 422, 200, 200]
    # TorchServe held the first request until its batch was full: one batch of four.
    # torchport ran it at once (the model was idle) and batched the three that came
    # meanwhile. Every answer is otherwise the same.
    assert [doc.get("batch") for _, doc in theirs] == [4, None, 4, 4]
    assert [doc.get("batch") for _, doc in ours] == [1, None, 3, 3]
    strip = [(status, {k: v for k, v in doc.items() if k != "batch"}) for status, doc in theirs]
    assert [
        (status, {k: v for k, v in doc.items() if k != "batch"}) for status, doc in ours
    ] == strip


def test_a_version_the_archive_never_had_is_a_404_of_torchserves_kind(
    torchserve: str, torchport: str
) -> None:
    theirs, ours = _both(torchserve, torchport, "/predictions/shout/9.0", b"x", {})
    assert ours.status_code == theirs.status_code == 404
    assert ours.json()["type"] == theirs.json()["type"] == "ModelVersionNotFoundException"


def test_front_end_processes_pass_raw_bodies_statuses_and_named_versions(
    archives: dict[str, Path], tmp_path: Path
) -> None:
    packages = [import_mar(archives[n], tmp_path / f"{n}.tpa").path for n in ("rows", "shout")]
    server = ServerProcess(tmp_path / "store", packages, TORCHPORT_FRONTENDS="2").start()
    try:
        url = server.url
        bad = httpx.post(f"{url}/predictions/rows", content=b'{"x": 1}', headers=JSON)
        assert (bad.status_code, bad.json()) == (422, {"error": "missing 'rows'"})
        pinned = httpx.post(f"{url}/predictions/shout/2.0", content=b"hi",
                            headers={"content-type": "text/plain", "x-tag": "fe"})  # fmt: skip
        assert (pinned.status_code, pinned.content) == (200, b"HI|3|fe")
        assert httpx.post(f"{url}/predictions/shout/9.0", content=b"x").status_code == 404
    finally:
        server.stop()
