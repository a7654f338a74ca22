"""TorchServe model archives built with the real `torch-model-archiver` (from PyPI), from
small models and handlers written as TorchServe's documentation shows them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

ARCHIVER = Path(sys.executable).with_name("torch-model-archiver")

MODEL_PY = """
import torch


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)
"""

ROWS_HANDLER = """
import time

import torch
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

from helpers import round_scores


class RowsHandler(BaseHandler):
    \"\"\"JSON rows of 4 numbers in; a request without "rows" answers 422 alone.\"\"\"

    def preprocess(self, data):
        rows, self.bad = [], []
        for i, item in enumerate(data):
            value = item.get("data") or item.get("body")
            if isinstance(value, dict) and value.get("slow"):
                time.sleep(value["slow"])  # holds the worker: requests meanwhile queue up
            if isinstance(value, dict) and value.get("explode"):
                raise PredictionException("asked to explode", 418)
            if isinstance(value, dict) and "rows" not in value:
                self.bad.append(i)
                rows.append([0.0] * 4)
            else:
                rows.append(value["rows"] if isinstance(value, dict) else value)
        return torch.as_tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        out = []
        for i, row in enumerate(data.tolist()):
            if i in self.bad:
                self.context.set_response_status(422, "missing rows", i)
                out.append({"error": "missing 'rows'"})
            else:
                self.context.set_response_content_type(i, "application/json")
                out.append({"scores": round_scores(row), "batch": len(data)})
        self.context.metrics.add_counter("RowsAnswered", len(out))
        return out
"""

HELPERS_PY = """
def round_scores(row):
    return [round(v, 5) for v in row]
"""

FUNCTION_HANDLER = """
import os

import torch

model = None


def handle(data, context):
    global model
    if data is None:
        props = context.system_properties
        path = os.path.join(props["model_dir"], context.manifest["model"]["serializedFile"])
        model = torch.jit.load(path)
        return None
    texts = [item.get("body") or item.get("data") for item in data]
    if any(isinstance(t, (bytes, bytearray)) for t in texts):
        raise ValueError("send text")
    width = int(model(torch.ones(1, 4)).shape[1])
    tags = [context.get_request_header(i, "x-tag") for i in range(len(texts))]
    return [f"{t.upper()}|{width}|{tag}" for t, tag in zip(texts, tags)]
"""

ECHO_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    return [
        {k: [type(v).__name__, v.decode() if isinstance(v, (bytes, bytearray)) else v]
         for k, v in item.items()}
        for item in data
    ]
"""

LABELS = {"0": "cat", "1": "dog", "2": "fish", "3": "bird", "4": "frog", "5": "lion"}


class TinyVision(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=5, stride=4)
        self.fc = torch.nn.Linear(4, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def archive(
    out: Path, name: str, *, handler: str, version: str = "1.0", serialized: Path | None = None,
    model_file: Path | None = None, extra: list[Path] = (), requirements: Path | None = None,
    config: Path | None = None,
) -> Path:  # fmt: skip
    """`torch-model-archiver` as its users run it; the archive's path."""
    out.mkdir(parents=True, exist_ok=True)
    command = [str(ARCHIVER), "--model-name", name, "--version", version, "--handler", handler,
               "--export-path", str(out), "--force"]  # fmt: skip
    if serialized is not None:
        command += ["--serialized-file", str(serialized)]
    if model_file is not None:
        command += ["--model-file", str(model_file)]
    if extra:
        command += ["--extra-files", ",".join(map(str, extra))]
    if requirements is not None:
        command += ["--requirements-file", str(requirements)]
    if config is not None:
        command += ["--config-file", str(config)]
    subprocess.run(command, check=True, capture_output=True)
    return out / f"{name}.mar"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def build_all(src: Path, out: Path) -> dict[str, Path]:
    """Every test archive: `rows` (eager, a BaseHandler subclass with a helper module),
    `shout` (TorchScript, a module-level handle), `echo` (a handle that says what it got),
    `vision` (TorchScript, the built-in image_classifier with index_to_name.json)."""
    src.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model_py = write(src / "model.py", MODEL_PY)
    namespace: dict[str, object] = {}
    exec(compile(model_py.read_text(), str(model_py), "exec"), namespace)
    tiny = namespace["TinyNet"]()  # type: ignore[operator]
    torch.save(tiny.state_dict(), src / "tiny.pt")
    torch.jit.save(torch.jit.script(tiny), src / "tiny_ts.pt")
    vision = TinyVision().eval()
    torch.jit.save(torch.jit.script(vision), src / "vision.pt")
    (src / "index_to_name.json").write_text(json.dumps(LABELS))
    write(src / "rows_handler.py", ROWS_HANDLER)
    write(src / "helpers.py", HELPERS_PY)
    write(src / "shout_handler.py", FUNCTION_HANDLER)
    write(src / "echo_handler.py", ECHO_HANDLER)
    return {
        "rows": archive(
            out,
            "rows",
            handler=str(src / "rows_handler.py"),
            serialized=src / "tiny.pt",
            model_file=model_py,
            extra=[src / "helpers.py"],
        ),
        "shout": archive(
            out,
            "shout",
            version="2.0",
            handler=str(src / "shout_handler.py"),
            serialized=src / "tiny_ts.pt",
        ),
        "echo": archive(
            out, "echo", handler=str(src / "echo_handler.py"), serialized=src / "tiny_ts.pt"
        ),
        "vision": archive(
            out,
            "vision",
            handler="image_classifier",
            serialized=src / "vision.pt",
            extra=[src / "index_to_name.json"],
        ),
    }


def png(width: int = 300, height: int = 260, seed: int = 0) -> bytes:
    """A small RGB PNG with some structure."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()
