"""Exports made once per test session (AOTInductor compiles for a minute), shared by the
tests that need them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import torchport
from torchport.export import ExportResult, export_package

BRANCHY = """
import torch

class Branchy(torch.nn.Module):
    # Python control flow on the data: tracing keeps one branch, torch.export refuses.
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return -x

def build():
    return Branchy()
"""

Exporter = Callable[[str, str], ExportResult]


@pytest.fixture(scope="session")
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exporter:
    """Exports made once per test session and shared by the tests that need them."""
    done: dict[tuple[str, str], ExportResult] = {}
    out = tmp_path_factory.mktemp("exports")

    def get(model: str, target: str) -> ExportResult:
        if (model, target) not in done:
            source = request.getfixturevalue(f"{model}_package")
            done[model, target] = export_package(source, target, out / f"{model}.{target}.tpa")
        return done[model, target]

    return get


@pytest.fixture(scope="session")
def branchy_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("branchy")
    (work / "model.py").write_text(BRANCHY)
    out = work / "branchy.tpa"
    # The example spans both signs, so random parity inputs take the other branch too.
    example = {"input": np.array([[-1.0, 0.5, 0.75, 0.25]], np.float32)}
    torchport.package(name="branchy", code=f"{work / 'model.py'}:build", example=example, out=out)
    return out
