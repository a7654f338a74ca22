"""A server follows the store's aliases: its own promotes and rollbacks at once, another
process's at the next refresh, and a refresh never undoes a change newer than its read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from torchport.errors import Unavailable
from torchport.service import Management, Registry
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


@dataclass
class Served:
    store: RacedStore
    management: Management
    registry: Registry

    def rollback_elsewhere(self) -> None:
        """The rollback `torchport store rollback` makes: another process, the same store."""
        SQLiteStore(self.store.root).rollback("mlp", actor="cli")


@pytest.fixture
def served(mlp_package: Path, store_dir: Path) -> Iterator[Served]:
    """`mlp` v1 and v2 registered and loaded, v2 the default."""
    store = RacedStore(store_dir)
    registry = Registry(store)
    management = Management(store, registry=registry)
    management.upload(mlp_package)
    registry.start()
    management.upload(mlp_package, promote=True)
    try:
        yield Served(store, management, registry)
    finally:
        registry.close()


def test_a_refresh_that_read_the_store_before_a_rollback_does_not_undo_it(served: Served) -> None:
    store, management, registry = served.store, served.management, served.registry
    assert registry.resolve("mlp", None) == 2
    store.meanwhile = lambda: management.rollback("mlp")
    registry.refresh()  # read default 2, then the rollback to 1 landed
    assert store.get_model("mlp").default == 1
    assert registry.resolve("mlp", None) == 1
    store.meanwhile = lambda: management.promote("mlp", 2)
    registry.refresh()
    assert registry.resolve("mlp", None) == 2


def test_a_refresh_follows_a_change_made_by_another_process(served: Served) -> None:
    served.rollback_elsewhere()
    assert served.registry.resolve("mlp", None) == 2  # not seen until the next refresh
    served.registry.refresh()
    assert served.registry.resolve("mlp", None) == 1


def test_a_refresh_leaves_a_model_unloaded_meanwhile_unloaded(served: Served) -> None:
    served.rollback_elsewhere()
    served.store.meanwhile = lambda: served.registry.unload("mlp")
    served.registry.refresh()  # read the new default 1, then the model was unloaded here
    with pytest.raises(Unavailable, match="unloaded"):
        served.registry.resolve("mlp", None)
