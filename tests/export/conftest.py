"""Exports made once per test session (AOTInductor compiles for a minute), shared by the
tests that need them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from torchport.export import ExportResult, export_package

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
