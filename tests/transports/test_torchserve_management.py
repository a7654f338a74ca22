"""TorchServe's management API (`--torchserve-management-port`): TorchServe's calls and
answer shapes over torchport's store, and a registration `url` that can only name the
model store or an allowed URL."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.inprocess import AUTH, TOKEN, InProcess, in_process
from tests.migrate.archives import archive, build_all
from torchport.service.torchserve import TorchServeModels
from torchport.settings import Settings
from torchport.transports.http.torchserve_management import build_torchserve_management_app


@pytest.fixture(scope="module")
def marstore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ts-mgmt")
    built = build_all(root / "src", root / "store")
    src = root / "src"
    # A second version of `rows` (the same model and handler, archived as 2.0).
    archive(root / "v2", "rows", version="2.0", handler=str(src / "rows_handler.py"),
            serialized=src / "tiny.pt", model_file=src / "model.py",
            extra=[src / "helpers.py"])  # fmt: skip
    shutil.copy(root / "v2" / "rows.mar", root / "store" / "rows-2.0.mar")
    return built["rows"].parent


@pytest.fixture
def served(tmp_path: Path, marstore: Path) -> Iterator[tuple[InProcess, TestClient]]:
    settings = {"model_store": marstore, "allowed_urls": [r"http://127\.0\.0\.1:\d+/ok/.*"]}
    with in_process(tmp_path / "store", [], **settings) as server:
        models = TorchServeModels(server.management, Settings(store=tmp_path, **settings))
        client = TestClient(build_torchserve_management_app(models, TOKEN))
        client.portal = server.http.portal
        client.headers.update(AUTH)
        yield server, client


def test_register_describe_scale_set_default_and_unregister_as_torchserve_answers(
    served: tuple[InProcess, TestClient],
) -> None:
    server, ts = served
    done = ts.post(
        "/models", params={"url": "rows.mar", "initial_workers": 1, "synchronous": "true"}
    )
    assert done.status_code == 200
    assert done.json() == {"status": 'Model "rows" Version: 1.0 registered with 1 initial workers'}
    assert server.http.post("/predictions/rows", json={"rows": [1, 2, 3, 4]}).status_code == 200

    later = ts.post(
        "/models", params={"url": "rows-2.0.mar", "batch_size": 4, "max_batch_delay": 50}
    )
    assert later.status_code == 202  # TorchServe's default: not synchronous, no workers
    assert "registered with 0 initial workers. Use scale workers API" in later.json()["status"]
    again = ts.post("/models", params={"url": "rows.mar"})
    assert again.status_code == 409
    assert again.json() == {
        "code": 409, "type": "ConflictStatusException",
        "message": "Model version 1.0 is already registered for model rows",
    }  # fmt: skip

    listed = ts.get("/models").json()
    assert listed == {"models": [{"modelName": "rows", "modelUrl": "rows.mar"}]}
    every = ts.get("/models/rows/all").json()
    assert [(d["modelVersion"], d["isDefault"]) for d in every] == [("1.0", True), ("2.0", False)]
    two = ts.get("/models/rows/2.0").json()[0]
    assert (two["batchSize"], two["maxBatchDelay"], two["minWorkers"]) == (4, 50, 0)
    one = ts.get("/models/rows/1.0").json()[0]  # loaded, on this machine's CPU
    assert (one["batchSize"], one["deviceType"]) == (1, "cpu")
    assert [w["gpu"] for w in one["workers"]] == [False]

    scaled = ts.put("/models/rows/2.0", params={"min_worker": 1, "synchronous": "true"})
    assert scaled.json() == {"status": "Workers scaled to 1 for model: rows, version: 2.0"}
    assert ts.get("/models/rows/2.0").json()[0]["minWorkers"] == 1

    refused = ts.delete("/models/rows/1.0")
    assert refused.status_code == 403
    assert refused.json()["type"] == "InvalidModelVersionException"
    promoted = ts.put("/models/rows/2.0/set-default")
    assert promoted.json() == {
        "status": 'Default version successfully updated for model "rows" to "2.0"'
    }
    assert server.management.get_model("rows").default == 2
    assert ts.delete("/models/rows/1.0").json() == {"status": 'Model "rows" unregistered'}
    assert ts.delete("/models/rows").json() == {"status": 'Model "rows" unregistered'}
    assert ts.get("/models").json() == {"models": []}
    gone = ts.get("/models/rows")
    assert gone.status_code == 404
    assert gone.json() == {"code": 404, "type": "ModelNotFoundException",
                           "message": "Model not found: rows"}  # fmt: skip
    assert server.http.post("/predictions/rows", json={"rows": [1, 2, 3, 4]}).status_code == 404


def test_scaling_to_zero_stops_serving_and_scaling_up_serves_again(
    served: tuple[InProcess, TestClient],
) -> None:
    server, ts = served
    ts.post("/models", params={"url": "shout.mar", "initial_workers": 1, "synchronous": "true"})
    text = {"content-type": "text/plain"}
    assert server.http.post("/predictions/shout", content=b"a", headers=text).status_code == 200
    ts.put("/models/shout", params={"min_worker": 0, "synchronous": "true"})
    assert server.http.post("/predictions/shout", content=b"a", headers=text).status_code == 503
    ts.put("/models/shout", params={"min_worker": 1, "synchronous": "true"})
    assert server.http.post("/predictions/shout", content=b"a", headers=text).status_code == 200


def test_pages_of_the_model_list(served: tuple[InProcess, TestClient]) -> None:
    _, ts = served
    for name in ("rows", "shout", "vision"):
        assert ts.post("/models", params={"url": f"{name}.mar"}).status_code == 202
    first = ts.get("/models", params={"limit": 2}).json()
    assert [m["modelName"] for m in first["models"]] == ["rows", "shout"]
    rest = ts.get("/models", params={"limit": 2, "next_page_token": first["nextPageToken"]})
    assert [m["modelName"] for m in rest.json()["models"]] == ["vision"]
    assert "nextPageToken" not in rest.json()


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("http://169.254.169.254/latest/meta-data/x.mar", 403, "matches none of allowed_urls"),
        ("https://example.com/model.mar", 403, "matches none of allowed_urls"),
        ("../store/rows.mar", 404, "Relative path is not allowed"),
        ("/etc/passwd", 403, "outside the model store"),
        ("file:///etc/passwd", 403, "outside the model store"),
        ("ftp://127.0.0.1/x.mar", 403, "scheme 'ftp' is not supported"),
        ("nothere.mar", 404, "Model not found at: nothere.mar"),
        ("", 400, "Parameter url is required."),
    ],
)
def test_a_url_outside_the_model_store_and_the_allow_list_is_refused(
    served: tuple[InProcess, TestClient], url: str, status: int, message: str
) -> None:
    _, ts = served
    refused = ts.post("/models", params={"url": url})
    assert refused.status_code == status
    assert message in refused.json()["message"]
    assert ts.get("/models").json() == {"models": []}


class _Files(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if "/redirect/" in self.path:
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/" + self.path.split("/")[-1])
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


def test_an_allowed_url_is_fetched_and_a_redirect_off_the_list_is_refused(
    served: tuple[InProcess, TestClient], marstore: Path, tmp_path: Path
) -> None:
    _, ts = served
    (tmp_path / "www" / "ok").mkdir(parents=True)
    shutil.copy(marstore / "shout.mar", tmp_path / "www" / "ok" / "shout.mar")
    handler = lambda *a: _Files(*a, directory=str(tmp_path / "www"))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        fetched = ts.post("/models", params={"url": f"{base}/ok/shout.mar", "synchronous": "true"})
        assert fetched.status_code == 200, fetched.text
        hop = ts.post("/models", params={"url": f"{base}/ok/../redirect/x.mar"})
        assert hop.status_code == 403  # dot segments resolved before matching
        redirected = ts.post("/models", params={"url": f"{base}/ok/redirect/x.mar"})
        assert redirected.status_code == 403
        assert "which allowed_urls does not allow" in redirected.json()["message"]
    finally:
        httpd.shutdown()


def test_every_call_needs_the_token(served: tuple[InProcess, TestClient]) -> None:
    _, ts = served
    del ts.headers["Authorization"]
    assert ts.get("/models").status_code == 401
    assert ts.post("/models", params={"url": "rows.mar"}).status_code == 401


def test_bad_parameters_are_a_400_naming_them(served: tuple[InProcess, TestClient]) -> None:
    _, ts = served
    bad = ts.post("/models", params={"url": "rows.mar", "batch_size": "many"})
    assert bad.status_code == 400
    assert "batch_size" in bad.json()["message"]
    assert ts.get("/models", params={"limit": 0}).status_code == 400
    assert ts.put("/models/zzz", params={"min_worker": 1}).status_code == 404
