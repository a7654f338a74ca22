"""Weights are mapped, not copied: one file per store, shared by every runner of it."""

from __future__ import annotations

from pathlib import Path

import torch

from torchport.runtime import open_runner
from torchport.runtime.weights import resident_bytes
from torchport.store import SQLiteStore


def mapped_files(model: torch.nn.Module) -> set[str]:
    """The files the model's parameters live in (from this process's memory map)."""
    spans = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            spans.append((start, end, fields[5]))
    found = set()
    for p in model.parameters():
        ptr = p.untyped_storage().data_ptr()
        found |= {name for start, end, name in spans if start <= ptr < end}
    return found


def test_runners_of_one_package_map_one_shared_weights_file(
    mlp_package: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "weights"
    first = open_runner(mlp_package, weights_dir=weights)
    second = open_runner(mlp_package, weights_dir=weights)
    try:
        (shared,) = list(weights.iterdir())
        for runner in (first, second):
            model = runner.handler.model
            assert mapped_files(model) == {str(shared)}  # the parameters are the file's pages
            assert runner.resident_bytes == resident_bytes(model) > 0
        assert oct(shared.stat().st_mode & 0o777) == "0o444"
        assert shared.name.split(".")[0] == first.manifest.files["weights.safetensors"]
    finally:
        first.close()
        second.close()


def test_every_parameter_starts_aligned_shared_or_not(mlp_package: Path, tmp_path: Path) -> None:
    # A shared file lays tensors out on 64-byte boundaries; an unpacked package's file,
    # whose tensors may start anywhere, is copied into fresh (aligned) memory instead.
    shared = open_runner(mlp_package, weights_dir=tmp_path / "weights")
    alone = open_runner(mlp_package)
    try:
        for runner in (shared, alone):
            for p in runner.handler.model.parameters():
                assert p.data_ptr() % 64 == 0
        assert not any(f.endswith(".safetensors") for f in mapped_files(alone.handler.model))
        x = torch.randn(5, 32)
        torch.testing.assert_close(  # bit for bit: the same kernels run
            shared.handler.model(x), alone.handler.model(x), rtol=0, atol=0
        )
    finally:
        shared.close()
        alone.close()


def test_gc_removes_weights_files_no_stored_package_holds(
    mlp_package: Path, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "store")
    info = store.add_version("mlp", mlp_package)
    open_runner(store.package_path(info), weights_dir=store.root / "weights").close()
    (store.root / "weights" / f"{'0' * 64}.safetensors").write_bytes(b"left by a deleted model")
    assert store.gc() == 1
    assert len(list((store.root / "weights").iterdir())) == 1
    store.delete_version("mlp", 1)
    assert store.gc() == 1
    assert list((store.root / "weights").iterdir()) == []
