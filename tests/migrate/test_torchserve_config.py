"""`--torchserve-config config.properties`: TorchServe's settings file read as torchport's
settings and the archives to register at start, every key it does not use named once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import TOKEN, free_port, wait_ready
from tests.migrate.archives import build_all
from torchport.errors import InvalidInput
from torchport.migrate.torchserve_config import read_properties, read_torchserve_config


def test_properties_are_read_as_java_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "config.properties"
    path.write_text(
        "# a comment\n! another\ninference_address=http://0.0.0.0:8080\n"
        "management_address: http\\://127.0.0.1\\:8081\n"
        'models={"a": {"1.0": \\\n  {"marName": "a.mar"}}}\n'
    )
    props = read_properties(path)
    assert props["inference_address"] == "http://0.0.0.0:8080"
    assert props["management_address"] == "http://127.0.0.1:8081"
    assert json.loads(props["models"]) == {"a": {"1.0": {"marName": "a.mar"}}}


def test_the_keys_that_matter_become_settings_and_archives(tmp_path: Path) -> None:
    store = tmp_path / "models"
    store.mkdir()
    for name in ("a.mar", "b.mar", "c.mar"):
        (store / name).write_bytes(b"")
    path = tmp_path / "config.properties"
    models = {"a": {"1.0": {"marName": "a.mar", "minWorkers": 2, "batchSize": 8,
                            "maxBatchDelay": 20, "defaultVersion": True}}}  # fmt: skip
    path.write_text(
        "\n".join([
            "inference_address=http://127.0.0.1:9080",
            "management_address=http://127.0.0.1:8081",
            "metrics_address=http://127.0.0.1:8082",
            f"model_store={store}",
            "load_models=all",
            "default_workers_per_model=3",
            f"models={json.dumps(models)}",
            "allowed_urls=https://models\\\\.example\\\\.com/.*,file:///srv/.*",
            "max_request_size=1000000",
            "default_response_timeout=30",
            "install_py_dep_per_model=true",
            "number_of_netty_threads=4",
            "some_unknown_key=1",
        ]) + "\n"
    )  # fmt: skip
    config = read_torchserve_config(path)
    assert config.settings == {
        "host": "127.0.0.1", "http_port": 9080, "management_host": "127.0.0.1",
        "torchserve_management_port": 8081, "grpc_port": 7070, "model_store": store,
        "allowed_urls": ["https://models\\.example\\.com/.*", "file:///srv/.*"],
        "max_request_bytes": 1000000, "request_timeout_s": 30,
    }  # fmt: skip
    by_url = {a.url: a for a in config.archives}
    assert set(by_url) == {"a.mar", "b.mar", "c.mar"}
    a = by_url["a.mar"]
    assert (a.model_name, a.workers, a.batch_size, a.max_batch_delay, a.default) == (
        "a", 2, 8, 20, True,
    )  # fmt: skip
    assert by_url["b.mar"].workers == 3
    notes = "\n".join(config.notes)
    for key in ("metrics_address", "install_py_dep_per_model", "number_of_netty_threads",
                "some_unknown_key"):  # fmt: skip
        assert sum(line.startswith(f"{key}:") for line in config.notes) == 1, notes
    assert "never installs packages" in notes


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("inference_address=localhost", "inference_address"),
        ("max_request_size=big", "max_request_size"),
        ("models={not json", "models"),
        ('models={"a": {"1.0": {"batchSize": 1}}}', "models"),
    ],
)
def test_a_bad_value_is_an_error_naming_its_key(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "config.properties"
    path.write_text(line + "\n")
    with pytest.raises(InvalidInput) as caught:
        read_torchserve_config(path)
    assert caught.value.field == field


def test_serve_with_a_torchserve_config_registers_its_models_and_speaks_its_api(
    tmp_path: Path,
) -> None:
    archives = build_all(tmp_path / "src", tmp_path / "models")
    http_port, mgmt_port, ts_port = free_port(), free_port(), free_port()
    models = {"shout": {"2.0": {"marName": "shout.mar", "minWorkers": 1, "batchSize": 4,
                                "maxBatchDelay": 10}}}  # fmt: skip
    config = tmp_path / "config.properties"
    config.write_text(
        f"inference_address=http://127.0.0.1:{http_port}\n"
        f"management_address=http://127.0.0.1:{ts_port}\n"
        f"model_store={archives['rows'].parent}\n"
        "load_models=rows.mar\n"
        f"models={json.dumps(models)}\n"
        "enable_metrics_api=true\n"
    )
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchport", "serve", "--store", str(tmp_path / "store"),
         "--torchserve-config", str(config), "--management-port", str(mgmt_port),
         "--grpc-port", str(free_port())],
        env={**os.environ, "TORCHPORT_TOKEN": TOKEN}, stdout=log.open("w"),
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{http_port}"
        wait_ready(proc, url, log)
        output = log.read_text()
        assert "enable_metrics_api: not used" in output
        answer = httpx.post(f"{url}/predictions/rows", json={"rows": [1, 2, 3, 4]})
        assert answer.status_code == 200
        auth = {"Authorization": f"Bearer {TOKEN}"}
        described = httpx.get(f"http://127.0.0.1:{ts_port}/models/shout", headers=auth).json()
        assert (described[0]["modelVersion"], described[0]["batchSize"]) == ("2.0", 4)
        assert described[0]["minWorkers"] == 1
        shout = httpx.post(f"{url}/predictions/shout", content=b"hi",
                           headers={"content-type": "text/plain"})  # fmt: skip
        assert shout.content == b"HI|3|None"
    finally:
        proc.terminate()
        proc.wait(30)
