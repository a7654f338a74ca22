"""`pip install torchport` alone (no extras) packages, loads, predicts, inspects and
exports, pulls none of the server stack, and `torchport serve` says what to install."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_STACK = ("starlette", "uvicorn", "grpc", "prometheus_client", "httpx", "tokenizers")

SCRIPT = """
import numpy as np, torch, torchport

torch.manual_seed(0)
module = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
x = np.ones((2, 4), np.float32)
torchport.package(module, name="tiny", example={"input": x}, out="tiny.tpa")
with torchport.load("tiny.tpa") as model:
    got = model.predict({"input": x})["output"]
want = module(torch.from_numpy(x)).detach().numpy()
assert np.allclose(got, want, atol=1e-6), (got, want)
print("predicted", got.shape)
"""


def _requirements(name: str, seen: set[str]) -> None:
    """`name` and every distribution it requires (markers that apply here only)."""
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return
    seen.add(key)
    for line in md.requires(name) or []:
        requirement, _, marker = line.partition(";")
        if "extra" in marker:
            continue
        req = re.split(r"[<>=!~\[ (]", requirement.strip(), maxsplit=1)[0]
        try:
            md.distribution(req)
        except md.PackageNotFoundError:
            continue  # e.g. a CUDA wheel this CPU build does without
        _requirements(req, seen)


def _share_torch(target: Path) -> None:
    """Link this environment's torch (and what it needs) into `target`: the same files a
    fresh `pip install torch==2.13.0` would copy (about 900 MB), read where they are."""
    target.mkdir()
    names: set[str] = set()
    _requirements("torch", names)
    for name in names:
        dist = md.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (target / top).exists() and top != "..":
                (target / top).symlink_to(source)


def test_the_core_installs_alone_and_packages_loads_predicts_and_exports(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    _share_torch(tmp_path / "torch")
    (Path(site) / "shared-torch.pth").write_text(str(tmp_path / "torch") + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if installed.returncode != 0 and "Could not find a version" in installed.stderr:
        pytest.skip(f"the package index is unreachable: {installed.stderr.strip()[-300:]}")
    assert installed.returncode == 0, installed.stderr[-3000:]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env)

    for module in SERVER_STACK:
        missing = run(str(python), "-c", f"import {module}")
        assert missing.returncode != 0, f"the core pulled {module}"
    done = run(str(python), "-c", SCRIPT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "predicted (2, 3)" in done.stdout
    cli = str(venv / "bin" / "torchport")
    inspected = run(cli, "inspect", "tiny.tpa")
    assert inspected.returncode == 0, inspected.stderr
    assert "tiny" in inspected.stdout
    exported = run(cli, "export", "tiny.tpa", "--to", "torchscript", "-o", "tiny-ts.tpa")
    assert exported.returncode == 0, exported.stderr[-3000:]
    serve = run(cli, "serve", "tiny.tpa", "--microservice")
    assert serve.returncode == 1
    [line] = serve.stderr.strip().splitlines()
    assert "pip install 'torchport[serve]'" in line
