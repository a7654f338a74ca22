"""The `torchport` command on real files: its entry point in this process (`cli`), and as a
user runs it, a real process (`run`) where the process is what is tested."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import torchport
from tests.helpers import rewrite
from torchport.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str | Path, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchport", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        input=stdin,
        timeout=300,
    )


def cli(
    *args: str | Path, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`torchport ARGS` through the same entry point (`main`), in this process: its exit
    status, standard output and standard error, with no interpreter to start."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["torchport", *map(str, args)]
    code: int | str | None = 0
    with (
        mock.patch.object(sys, "argv", argv),
        mock.patch.object(sys, "stdin", io.StringIO(stdin or "")),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        contextlib.chdir(cwd or Path.cwd()),
    ):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    status = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files of the README's tour: weights and an example, made by the user."""
    from torchport.examples.mlp.model import build

    work = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    module = build().eval()
    save_file(module.state_dict(), str(work / "mlp.safetensors"))
    x = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    (work / "example.json").write_text(json.dumps({"input": x.tolist()}))
    program = torch.export.export(
        module, (torch.from_numpy(x),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(work / "prog.pt2"))
    torch.jit.save(torch.jit.trace(module, torch.from_numpy(x)), str(work / "mlp.pt"))
    return work


def test_the_readme_package_then_predict_tour(workdir: Path) -> None:
    result = run(
        "package", "--name", "mlp", "--model", ROOT / "examples/mlp/model.py:build",
        "--weights", "mlp.safetensors", "--example", "example.json", "-o", "mlp.tpa",
        cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote mlp.tpa" in result.stdout
    predicted = run("predict", "mlp.tpa", "--input", "example.json", cwd=workdir)
    assert predicted.returncode == 0, predicted.stderr
    outputs = json.loads(predicted.stdout)
    x = np.array(json.loads((workdir / "example.json").read_text())["input"], np.float32)
    with torchport.load(workdir / "mlp.tpa") as m:
        want = m.predict({"input": x})["output"]
    np.testing.assert_allclose(np.array(outputs["output"], np.float32), want, rtol=1e-6)


@pytest.mark.parametrize("flag", [("--exported", "prog.pt2"), ("--torchscript", "mlp.pt")])
def test_package_from_an_exported_program_or_torchscript(
    workdir: Path, flag: tuple[str, str]
) -> None:
    out = f"{flag[0][2:]}.tpa"
    result = cli(
        "package", "--name", "mlp", *flag, "--example", "example.json", "-o", out, cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    shown = cli("inspect", out, "--json", cwd=workdir)
    assert json.loads(shown.stdout)["model"]["kind"] == flag[0][2:]


def test_predict_reads_stdin(workdir: Path, mlp_package: Path) -> None:
    result = cli("predict", mlp_package, "--input", "-", stdin=json.dumps({"input": [[0.0] * 32]}))
    assert result.returncode == 0, result.stderr
    assert np.array(json.loads(result.stdout)["output"]).shape == (1, 8)


def test_bad_input_gets_one_line_and_a_non_zero_exit(
    workdir: Path, mlp_package: Path, tmp_path: Path
) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"input": [[1.0, 2.0]]}))
    assert_one_line_error(
        cli("predict", mlp_package, "--input", tmp_path / "bad.json"),
        "tensor 'input'", "expected shape [-1, 32]", "got [1, 2]",
    )  # fmt: skip
    (tmp_path / "broken.json").write_text("{")
    assert_one_line_error(
        cli("predict", mlp_package, "--input", tmp_path / "broken.json"), "not valid JSON"
    )
    assert_one_line_error(
        cli("predict", tmp_path / "nope.tpa", "--input", tmp_path / "bad.json"), "does not exist"
    )

    def tamper(files: dict[str, bytes]) -> dict[str, bytes]:
        files["weights.safetensors"] = files["weights.safetensors"][:-1] + b"\0"
        return files

    tampered = rewrite(mlp_package, tmp_path / "tampered.tpa", tamper)
    assert_one_line_error(
        cli("inspect", tampered), "weights.safetensors", "changed after packaging"
    )
    (tmp_path / "w.pkl").write_bytes(b"\x80\x04K\x01.")
    model = ROOT / "examples/mlp/model.py:build"
    example = workdir / "example.json"
    assert_one_line_error(
        cli("package", "--name", "m", "--model", model, "--weights", tmp_path / "w.pkl",
            "--example", example, "-o", tmp_path / "m.tpa"),
        "pickles are refused",
    )  # fmt: skip
    assert not (tmp_path / "m.tpa").exists()


@pytest.mark.parametrize("kind", ["directory", "s3"])
def test_store_commands_register_promote_rollback_and_audit(
    mlp_package: Path, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    store = tmp_path / "store" if kind == "directory" else request.getfixturevalue("s3_url")
    for _ in range(2):
        added = cli("store", "add", mlp_package, "--store", store)
        assert added.returncode == 0, added.stderr
    assert "registered mlp v2" in added.stdout
    listed = json.loads(cli("store", "list", "--store", store, "--json").stdout)
    assert listed == [{"name": "mlp", "default": 1, "previous": None, "versions": [1, 2]}]
    assert cli("store", "promote", "mlp", "2", "--store", store).returncode == 0
    assert_one_line_error(cli("store", "delete", "mlp", "2", "--store", store), "is the default")
    assert "default is v1" in cli("store", "rollback", "mlp", "--store", store).stdout
    assert cli("store", "delete", "mlp", "2", "--store", store).returncode == 0
    audit = cli("store", "audit", "--store", store).stdout
    for action in ("upload", "promote", "rollback", "delete"):
        assert action in audit
    assert "consistent" in cli("store", "verify", "--store", store).stdout
    predicted = cli("predict", "mlp", "--store", store, "--input", "-", stdin='{"input": [[0.0]]}')
    assert_one_line_error(predicted, "expected shape [-1, 32]")


def test_store_copy_moves_a_local_store_to_a_bucket_and_refuses_a_second_copy(
    mlp_package: Path, tmp_path: Path, s3_url: str
) -> None:
    local = tmp_path / "store"
    for _ in range(2):
        assert cli("store", "add", mlp_package, "--store", local).returncode == 0
    assert cli("store", "promote", "mlp", "2", "--store", local).returncode == 0
    copied = cli("store", "copy", local, s3_url)
    assert copied.returncode == 0, copied.stderr
    assert "copied 1 models (2 versions" in copied.stdout
    listed = json.loads(cli("store", "list", "--store", s3_url, "--json").stdout)
    assert listed == [{"name": "mlp", "default": 2, "previous": 1, "versions": [1, 2]}]
    assert "consistent" in cli("store", "verify", "--store", s3_url).stdout
    assert_one_line_error(cli("store", "copy", local, s3_url), "has mlp already", "nothing")
    assert_one_line_error(
        cli("store", "list", "--store", "s3://Not_A_Bucket/x"), "not an S3 bucket name"
    )


def test_examples_register_fills_an_empty_store_once(
    mlp_package: Path, digits_package: Path, minilm_package: Path, tmp_path: Path
) -> None:
    built = tmp_path / "built"
    built.mkdir()
    for p in (mlp_package, digits_package, minilm_package):
        shutil.copy(p, built / p.name)
    store = tmp_path / "store"
    first = cli("examples", "register", "--store", store, "--out", built)
    assert first.returncode == 0, first.stderr
    again = cli("examples", "register", "--store", store, "--out", built)
    assert again.stdout.count("already in") == 3
    listed = {
        m["name"]: m["versions"]
        for m in json.loads(cli("store", "list", "--store", store, "--json").stdout)
    }
    assert listed == {"mlp": [1], "digits": [1], "minilm": [1]}


def test_serve_on_a_port_in_use_fails_with_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(
            "serve", "--store", tmp_path / "s", "--http-port", port, "--management-port", "0"
        )
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("source", "shown"),
    [("TORCHPORT_TOKEN", "$TORCHPORT_TOKEN"), ("/s/token", "$(cat /s/token)")],
)
def test_the_management_curl_hint_reads_the_token_where_it_is(source: str, shown: str) -> None:
    from torchport.cli.serve import try_lines
    from torchport.server import ServerInfo

    info = ServerInfo("http://127.0.0.1:8080", "127.0.0.1:8081", "http://127.0.0.1:8082",
                      Path("/s"), source, [("mlp", 1)], 1.0)  # fmt: skip
    [hint] = [line for line in try_lines(info) if "8082" in line]
    assert f'"Authorization: Bearer {shown}"' in hint


def test_models_list_shows_each_gpu_with_its_memory_and_use() -> None:
    from torchport.cli.models import device_lines

    gib = 2**30
    h200 = {"index": 0, "name": "NVIDIA H200", "total_bytes": 140 * gib,
            "used_bytes": 30 * gib, "allocated_bytes": 20 * gib, "reserved_bytes": 24 * gib,
            "utilization": 0.42}  # fmt: skip
    assert device_lines([h200, {**h200, "index": 1, "utilization": None}]) == [
        "cuda:0 NVIDIA H200: 30.0 GiB used of 140.0 GiB (this server: 20.0 GiB allocated, "
        "24.0 GiB reserved), 42% busy",
        "cuda:1 NVIDIA H200: 30.0 GiB used of 140.0 GiB (this server: 20.0 GiB allocated, "
        "24.0 GiB reserved)",
    ]
    assert device_lines([]) == []
