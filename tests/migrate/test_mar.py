"""`torchport import MODEL.mar`: TorchServe archives (made by the real torch-model-archiver)
become verified packages whose handlers run unchanged and answer as TorchServe does."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import torchport
from tests.cli.test_cli import cli
from tests.e2e.server import value
from tests.inprocess import in_process
from tests.migrate.archives import LABELS, archive, build_all, png, write
from torchport.archive import read_package
from torchport.errors import PackageError, UnsafeContent
from torchport.migrate import import_mar
from torchport.raw_io import answer, request_row
from torchport.runtime.torchserve.ts.torch_handler.vision_handler import ImagenetTransform


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mar")
    return build_all(root / "src", root / "store")


@pytest.fixture(scope="module")
def packages(
    archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tpa")
    example = out / "row.json"
    example.write_text('{"rows": [1, 2, 3, 4]}')
    image = out / "image.png"
    image.write_bytes(png())
    return {
        "rows": import_mar(archives["rows"], out / "rows.tpa", example=example).path,
        "shout": import_mar(archives["shout"], out / "shout.tpa").path,
        "vision": import_mar(archives["vision"], out / "vision.tpa", example=image).path,
    }


def test_an_eager_archive_becomes_code_and_safetensors_weights_with_its_handler(
    packages: dict[str, Path],
) -> None:
    package = read_package(packages["rows"])
    manifest = package.manifest
    assert manifest.name == "rows"
    assert manifest.model.kind.value == "code"
    assert manifest.model.factory == "TinyNet"
    assert manifest.model.weights == "weights.safetensors"
    assert manifest.handler is not None
    assert manifest.handler.api == "torchserve"
    assert {"helpers.py", "MAR-INF/MANIFEST.json"} <= set(manifest.files)
    assert "tiny.pt" not in manifest.files  # the pickle-format state dict is not shipped
    assert manifest.runtime.max_batch_size == 1  # TorchServe's default batch size
    assert len(manifest.examples) == 1


def test_the_handler_answers_as_torchserve_encodes_with_per_request_status(
    packages: dict[str, Path],
) -> None:
    model = torchport.load(packages["rows"])
    body, status, headers = answer(
        model.predict(request_row(b'{"rows": [1, 2, 3, 4]}', {"Content-Type": "application/json"}))
    )
    assert status == 200
    assert headers == {"content-type": "application/json"}
    decoded = json.loads(body)
    assert decoded["batch"] == 1
    assert len(decoded["scores"]) == 3
    assert body.startswith(b'{\n  "scores": [\n')  # json.dumps(..., indent=2), as TorchServe
    body, status, _ = answer(
        model.predict(request_row(b'{"x": 1}', {"content-type": "application/json"}))
    )
    assert (status, json.loads(body)) == (422, {"error": "missing 'rows'"})


def _batch(rows: list[bytes]) -> dict[str, np.ndarray]:
    bodies = np.empty(len(rows), dtype=object)
    bodies[:] = rows
    headers = np.empty(len(rows), dtype=object)
    headers[:] = [b'{"content-type": "application/json"}'] * len(rows)
    return {"body": bodies, "headers": headers}


def test_a_batch_reaches_the_handler_as_one_list_and_errors_stay_per_request(
    packages: dict[str, Path],
) -> None:
    model = torchport.load(packages["rows"])
    outputs = model.predict(_batch([b'{"rows": [1, 1, 1, 1]}', b'{"x": 1}', b"[0, 0, 0, 1]"]))
    answers = [answer(outputs, i) for i in range(3)]
    assert [a[1] for a in answers] == [200, 422, 200]
    assert [json.loads(a[0]).get("batch") for a in answers] == [3, None, 3]


def test_a_request_that_fails_its_batch_is_rerun_alone_so_only_it_fails(
    packages: dict[str, Path],
) -> None:
    model = torchport.load(packages["rows"])
    outputs = model.predict(
        _batch([b'{"rows": [1, 1, 1, 1]}', b'{"rows": [1, 2]}', b'{"explode": true}'])
    )
    answers = [answer(outputs, i) for i in range(3)]
    assert answers[0][1] == 200
    assert json.loads(answers[0][0])["batch"] == 1
    assert answers[1][1] == 503
    assert json.loads(answers[1][0]) == {
        "code": 503, "type": "InternalServerException", "message": "Prediction failed",
    }  # fmt: skip
    assert answers[2][1] == 418
    assert json.loads(answers[2][0])["message"] == "asked to explode"


def test_a_module_level_handle_function_gets_text_headers_and_its_torchscript_model(
    packages: dict[str, Path],
) -> None:
    model = torchport.load(packages["shout"])
    body, status, _ = answer(
        model.predict(request_row(b"hello", {"content-type": "text/plain", "X-Tag": "t1"}))
    )
    assert (body, status) == (b"HELLO|3|t1", 200)
    body, status, headers = answer(model.predict(request_row(b"\xff\x00", {})))
    assert status == 503
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["message"] == "Prediction failed"


def test_the_builtin_image_classifier_names_the_top_five_classes(
    packages: dict[str, Path], archives: dict[str, Path]
) -> None:
    manifest = read_package(packages["vision"]).manifest
    assert manifest.model.kind.value == "torchscript"
    assert "index_to_name.json" in manifest.files
    model = torchport.load(packages["vision"])
    image = png(seed=3)
    body, status, _ = answer(model.predict(request_row(image, {"content-type": "image/png"})))
    top = json.loads(body)
    assert status == 200
    assert len(top) == 5
    assert set(top) <= set(LABELS.values())
    assert list(top.values()) == sorted(top.values(), reverse=True)
    # The same numbers as torchvision's Resize(256), CenterCrop(224), ToTensor, Normalize
    # followed by the model, softmax and top-5 (computed here without the handler).
    with zipfile.ZipFile(archives["vision"]) as mar:
        scripted = torch.jit.load(io.BytesIO(mar.read("vision.pt")))
    batch = ImagenetTransform()(Image.open(io.BytesIO(image)))[None]
    with torch.no_grad():
        probs = torch.softmax(scripted(batch), dim=1)[0]
    expected = {LABELS[str(i)]: float(probs[i]) for i in torch.topk(probs, 5).indices.tolist()}
    assert top == pytest.approx(expected, rel=1e-6)


def test_handlers_see_ts_but_torchport_installs_no_top_level_ts(
    packages: dict[str, Path],
) -> None:
    torchport.load(packages["rows"])
    assert "ts" not in sys.modules
    assert not any(name == "ts" or name.startswith("ts.") for name in sys.modules)


def test_torchserve_routes_answer_with_the_handlers_body_and_status(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    with in_process(tmp_path / "store", [packages["rows"], packages["shout"]]) as server:
        ok = server.http.post("/predictions/rows", json={"rows": [1, 2, 3, 4]})
        assert ok.status_code == 200
        assert json.loads(ok.content)["batch"] == 1
        bad = server.http.post("/predictions/rows", json={"x": 1})
        assert bad.status_code == 422
        assert bad.json() == {"error": "missing 'rows'"}
        text = server.http.post(
            "/predictions/shout",
            content=b"hi",
            headers={"content-type": "text/plain", "x-tag": "q"},
        )
        assert (text.status_code, text.content) == (200, b"HI|3|q")
        assert "content-type" not in text.headers  # TorchServe sends none unless the handler does
        failed = server.http.post("/predictions/shout", content=b"\xff")
        assert failed.status_code == 503
        assert failed.json()["type"] == "InternalServerException"
        # Every other protocol sees the raw signature's tensors.
        oip = server.http.post(
            "/v2/models/shout/infer",
            json={"inputs": [{"name": "body", "datatype": "BYTES", "shape": [1], "data": ["yo"]}]},
        )
        assert oip.status_code == 200
        outputs = {o["name"]: o["data"] for o in oip.json()["outputs"]}
        assert outputs["status"] == [503]  # no content type: bytes, which this handler refuses
        # What handlers record through context.metrics is on /metrics, per version.
        samples = server.scrape()
        handler_time = value(
            samples,
            "torchport_handler_metric",
            model="rows",
            version="1",
            metric="HandlerTime",
            unit="ms",
            dimensions="ModelName:rows",
        )
        assert handler_time > 0
        answered = value(
            samples,
            "torchport_handler_metric",
            model="rows",
            version="1",
            metric="RowsAnswered",
            unit="count",
            dimensions="ModelName:rows",
        )
        assert answered == 3  # the upload's example check, then the two requests


def test_an_archive_with_a_pickled_full_model_is_refused_saying_what_to_do(
    tmp_path: Path,
) -> None:
    src = write(tmp_path / "model.py", "import torch\n\nclass Net(torch.nn.Linear):\n    pass\n")
    handler = write(tmp_path / "h.py", "def handle(data, context):\n    return data\n")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "full.pt")
    mar = archive(tmp_path, "full", handler=str(handler), serialized=tmp_path / "full.pt")
    with pytest.raises(UnsafeContent, match=r"pickled model .*state dict.*TorchScript"):
        import_mar(mar, tmp_path / "full.tpa")
    assert not (tmp_path / "full.tpa").exists()
    del src


def test_a_requirements_file_is_refused_unless_its_packages_are_installed(tmp_path: Path) -> None:
    handler = write(tmp_path / "h.py", "def handle(data, context):\n    return data\n")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "m.pt")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy>=1\n")
    mar = archive(tmp_path, "req", handler=str(handler), serialized=tmp_path / "m.pt",
                  requirements=reqs)  # fmt: skip
    with pytest.raises(UnsafeContent, match="never installs packages.*--requirements-installed"):
        import_mar(mar, tmp_path / "req.tpa")
    manifest = import_mar(mar, tmp_path / "req.tpa", requirements_installed=True).manifest
    assert manifest.name == "req"
    reqs.write_text("surely-not-installed-package==1\n")
    mar = archive(tmp_path, "req2", handler=str(handler), serialized=tmp_path / "m.pt",
                  requirements=reqs)  # fmt: skip
    with pytest.raises(Exception, match="not installed here: surely-not-installed-package"):
        import_mar(mar, tmp_path / "req2.tpa", requirements_installed=True)


def test_an_unsupported_builtin_handler_is_refused_listing_the_supported_ones(
    tmp_path: Path,
) -> None:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "m.pt")
    mar = archive(tmp_path, "txt", handler="text_classifier", serialized=tmp_path / "m.pt")
    with pytest.raises(PackageError, match="'text_classifier' is not supported.*image_classifier"):
        import_mar(mar, tmp_path / "txt.tpa")


def test_model_config_yaml_sets_batching_and_process_workers(tmp_path: Path) -> None:
    handler = write(tmp_path / "h.py", "def handle(data, context):\n    return data\n")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "m.pt")
    config = tmp_path / "model-config.yaml"
    config.write_text("batchSize: 8\nmaxBatchDelay: 20\nminWorkers: 2\nmaxWorkers: 2\n")
    mar = archive(tmp_path, "cfg", handler=str(handler), serialized=tmp_path / "m.pt",
                  config=config)  # fmt: skip
    manifest = import_mar(mar, tmp_path / "cfg.tpa").manifest
    runtime = manifest.runtime
    assert (runtime.max_batch_size, runtime.max_batch_delay_ms) == (8, 20.0)
    assert (runtime.workers, runtime.worker_kind) == (2, "process")


def test_not_an_archive_is_one_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mar"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(PackageError, match="not a TorchServe model archive"):
        import_mar(bogus, tmp_path / "x.tpa")


def test_the_import_command_writes_the_package_and_says_when_it_has_no_example(
    archives: dict[str, Path], tmp_path: Path
) -> None:
    done = cli("import", archives["shout"], "-o", tmp_path / "shout.tpa")
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    assert "model 'shout'" in done.stdout
    assert "no example" in done.stdout
    assert "--example" in done.stdout
    assert read_package(tmp_path / "shout.tpa").manifest.name == "shout"
    failed = cli("import", tmp_path / "missing.mar")
    assert failed.returncode != 0
    assert failed.stderr.count("\n") == 1
    assert "missing.mar does not exist" in failed.stderr


def test_an_imported_package_is_not_exported_and_says_why(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    from torchport.export import export_package
    from torchport.export.targets import ExportFailed

    with pytest.raises(ExportFailed, match="runs a torchserve handler on raw request bodies"):
        export_package(packages["rows"], "torchscript", tmp_path / "x.tpa")


def test_an_exported_program_archive_runs_its_handler_on_the_program(tmp_path: Path) -> None:
    handler = write(
        tmp_path / "h.py",
        "import torch\n"
        "from ts.torch_handler.base_handler import BaseHandler\n\n\n"
        "class Rows(BaseHandler):\n"
        "    def preprocess(self, data):\n"
        "        return torch.tensor([d['body'] for d in data], dtype=torch.float32)\n",
    )
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 2).eval()
    example = torch.ones(2, 4)
    program = torch.export.export(
        linear, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, tmp_path / "linear.pt2")
    mar = archive(tmp_path, "exported", handler=str(handler), serialized=tmp_path / "linear.pt2")
    imported = import_mar(mar, tmp_path / "exported.tpa")
    assert imported.manifest.model.kind.value == "exported"
    body, status, _ = answer(
        torchport.load(imported.path).predict(
            request_row(b"[1, 2, 3, 4]", {"content-type": "application/json"})
        )
    )
    assert status == 200
    expected = linear(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).tolist()[0]
    assert json.loads(body) == pytest.approx(expected, rel=1e-6)
