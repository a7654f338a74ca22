"""A server follows the store's aliases: its own promotes and rollbacks at once, another
process's at the next refresh, and a refresh never undoes a change newer than its read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from torchport.errors import Unavailable
from torchport.service import Management
from torchport.service.inference import InferenceService
from torchport.store import ModelInfo, SQLiteStore


class RacedStore(SQLiteStore):
    """The real store, with a change by this server landing just after a refresh's read."""

    meanwhile: Callable[[], object] | None = None

    def list_models(self) -> list[ModelInfo]:
        models = super().list_models()
        if self.meanwhile is not None:
            act, self.meanwhile = self.meanwhile, None
            act()
        return models


@pytest.fixture
def served(mlp_package: Path, store_dir: Path) -> Iterator[tuple[RacedStore, Management]]:
    store = RacedStore(store_dir)
    inference = InferenceService(store)
    management = Management(store, inference=inference)
    management.upload(mlp_package)
    inference.start()
    management.upload(mlp_package, promote=True)
    try:
        yield store, management
    finally:
        inference.close()


def test_a_refresh_that_read_the_store_before_a_rollback_does_not_undo_it(
    served: tuple[RacedStore, Management],
) -> None:
    store, management = served
    inference = management.inference
    assert inference is not None
    assert inference.resolve("mlp", None) == 2
    store.meanwhile = lambda: management.rollback("mlp")
    inference.refresh()  # read default 2, then the rollback to 1 landed
    assert store.get_model("mlp").default == 1
    assert inference.resolve("mlp", None) == 1
    store.meanwhile = lambda: management.promote("mlp", 2)
    inference.refresh()
    assert inference.resolve("mlp", None) == 2


def test_a_refresh_follows_a_change_made_by_another_process(
    served: tuple[RacedStore, Management], store_dir: Path
) -> None:
    _, management = served
    inference = management.inference
    assert inference is not None
    SQLiteStore(store_dir).rollback("mlp", actor="cli")
    assert inference.resolve("mlp", None) == 2  # not seen until the next refresh
    inference.refresh()
    assert inference.resolve("mlp", None) == 1


def test_a_refresh_leaves_a_model_unloaded_meanwhile_unloaded(
    served: tuple[RacedStore, Management], store_dir: Path
) -> None:
    store, management = served
    inference = management.inference
    assert inference is not None
    SQLiteStore(store_dir).rollback("mlp", actor="cli")
    store.meanwhile = lambda: inference.unload("mlp")
    inference.refresh()  # read the new default 1, then the model was unloaded here
    with pytest.raises(Unavailable, match="unloaded"):
        inference.resolve("mlp", None)
