"""A server follows the store: its own promotes and rollbacks at once, another process's
(another replica's) at the next refresh — aliases, deletes, configs, rollouts, recordings —
and a refresh never undoes a change newer than its read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from torchport.errors import NotFound, Unavailable
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


def test_a_refresh_follows_deletes_made_elsewhere(served: Served, mlp_package: Path) -> None:
    elsewhere = SQLiteStore(served.store.root)
    assert served.registry.is_ready("mlp", 1)
    elsewhere.delete_version("mlp", 1)
    served.registry.refresh()
    assert [s.version for s in served.registry.states()] == [2]
    assert served.registry.workers("mlp", 1) == {}  # unloaded
    elsewhere.delete_version("mlp", 2)  # the last version: the model is gone
    served.registry.refresh()
    assert served.registry.states() == []
    assert served.registry.workers("mlp", 2) == {}
    with pytest.raises(NotFound, match="model 'mlp' not found"):
        served.registry.resolve("mlp", None)


def test_a_refresh_applies_a_config_changed_elsewhere(served: Served) -> None:
    SQLiteStore(served.store.root).set_config("mlp", 2, {"max_batch_size": 3})
    loaded = served.registry.acquire("mlp", 2, by_request=False)
    served.registry.release(loaded)
    assert loaded.batcher.policy.max_batch_size != 3
    served.registry.refresh()
    assert loaded.batcher.policy.max_batch_size == 3


def test_a_model_is_not_ready_until_the_default_the_store_names_is_served(
    served: Served, mlp_package: Path
) -> None:
    elsewhere = SQLiteStore(served.store.root)
    broken = elsewhere.add_version("mlp", mlp_package)
    path = elsewhere.blobs.path(broken.digest)
    path.chmod(0o644)
    path.write_bytes(b"not the package that was registered")
    elsewhere.promote("mlp", broken.version)
    served.registry.refresh()
    # The new default cannot be served: the old one goes on answering, and the model says
    # it is not ready for what the store names.
    assert served.registry.resolve("mlp", None) == 2
    assert not served.registry.is_ready("mlp")
    elsewhere.rollback("mlp")
    served.registry.refresh()
    assert served.registry.is_ready("mlp")


def test_a_refresh_follows_rollouts_and_recordings_started_elsewhere(served: Served) -> None:
    elsewhere = SQLiteStore(served.store.root)
    elsewhere.start_rollout(
        "mlp", candidate=1, mode="canary", share=0.5, sticky_header=None, rules={}
    )
    elsewhere.set_recording("mlp", {"max_per_second": 5})
    served.registry.refresh()
    assert served.registry.rollouts.active("mlp") is not None
    assert served.registry.recorder.wants("mlp")
    elsewhere.end_rollout("mlp", "stopped", {})
    elsewhere.set_recording("mlp", None)
    served.registry.refresh()
    assert served.registry.rollouts.active("mlp") is None
    assert not served.registry.recorder.wants("mlp")


def test_a_refresh_with_nothing_changed_elsewhere_changes_nothing(served: Served) -> None:
    registry = served.registry
    registry.refresh()
    before = {key: registry.acquire_loaded(*key) for key in (("mlp", 1), ("mlp", 2))}
    for loaded in before.values():
        assert loaded is not None
        registry.release(loaded)
    for _ in range(3):
        registry.refresh()
    for key, loaded in before.items():
        again = registry.acquire_loaded(*key)
        assert again is loaded  # the same deployment and batcher: nothing reloaded
        assert again is not None
        registry.release(again)
