"""Uploads are verified before they are registered; a refused upload changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import edit_manifest, rewrite
from torchport.errors import IntegrityError, ModelLoadError, PackageError, TooLarge
from torchport.service import Management
from torchport.settings import Limits
from torchport.store import SQLiteStore


def snapshot(store: SQLiteStore) -> tuple[Any, ...]:
    models = [
        (m.name, m.default, m.previous, [v.digest for v in m.versions]) for m in store.list_models()
    ]
    return (models, len(store.audit(limit=10_000)), sorted(store.blobs.digests()))


def test_upload_registers_a_verified_package(mlp_package: Path, store_dir: Path) -> None:
    management = Management(SQLiteStore(store_dir))
    report = management.upload(mlp_package)
    assert (report.version.model, report.version.version) == ("mlp", 1)
    assert report.version.metadata["signature"]["inputs"][0]["shape"] == [-1, 32]
    assert management.upload(mlp_package).version.version == 2
    assert management.store.get_model("mlp").default == 1
    assert management.upload(mlp_package, promote=True).version.version == 3
    assert management.store.get_model("mlp").default == 3


def _wrong_example(m: dict[str, Any]) -> dict[str, Any]:
    m["examples"][0]["outputs"]["output"][0][0] += 1.0
    return m


def test_bad_packages_are_refused_and_leave_the_store_as_it_was(
    mlp_package: Path, store_dir: Path, tmp_path: Path
) -> None:
    store = SQLiteStore(store_dir)
    management = Management(store, Limits(max_package_bytes=1_000_000))
    management.upload(mlp_package)
    before = snapshot(store)

    def tamper(files: dict[str, bytes]) -> dict[str, bytes]:
        files["model.py"] += b"\n# changed\n"
        return files

    truncated = tmp_path / "cut.tpa"
    truncated.write_bytes(mlp_package.read_bytes()[:5000])
    big = tmp_path / "big.tpa"
    big.write_bytes(b"\0" * 1_000_001)
    cases: list[tuple[Path, type[Exception], str]] = [
        (
            rewrite(mlp_package, tmp_path / "t.tpa", tamper),
            IntegrityError,
            "changed after packaging",
        ),
        (truncated, PackageError, "truncated"),
        (
            edit_manifest(mlp_package, tmp_path / "k.tpa", lambda m: {**m, "x": 1}),
            PackageError,
            "unknown key 'x'",
        ),
        (
            edit_manifest(mlp_package, tmp_path / "e.tpa", _wrong_example),
            ModelLoadError,
            "does not reproduce its own example",
        ),
        (big, TooLarge, "over the limit"),
    ]
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            management.upload(path)
        assert snapshot(store) == before, path.name
    assert store.verify() == []
    assert list((store_dir / "blobs" / "tmp").iterdir()) == []


def test_a_package_whose_model_fails_to_load_is_refused(
    mlp_package: Path, store_dir: Path, tmp_path: Path
) -> None:
    def break_factory(m: dict[str, Any]) -> dict[str, Any]:
        m["model"]["factory"] = "nope"
        return m

    store = SQLiteStore(store_dir)
    with pytest.raises(ModelLoadError, match="model.py has no callable 'nope'"):
        Management(store).upload(edit_manifest(mlp_package, tmp_path / "f.tpa", break_factory))
    assert store.list_models() == []
    assert json.loads(json.dumps([])) == []
