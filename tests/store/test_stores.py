"""What every store does alike, on the embedded store and on the object store (a real S3
API on loopback): numbered versions, aliases, deletes, names, audit, copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torchport.errors import Conflict, InvalidInput, NotFound
from torchport.store import ModelStore, open_store


def blob(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / f"pkg-{os.urandom(6).hex()}.tpa"
    path.write_bytes(content)
    return path


def _open(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> ModelStore:
    if kind == "sqlite":
        return open_store(tmp_path / f"store-{os.urandom(4).hex()}")
    url = request.getfixturevalue("s3_url")
    return open_store(
        f"{url}-{os.urandom(4).hex()}", cache_dir=tmp_path / f"cache-{os.urandom(4).hex()}"
    )


@pytest.fixture(params=["sqlite", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ModelStore:
    return _open(request.param, tmp_path, request)


def test_versions_are_numbered_1_2_3_and_the_first_is_default(
    store: ModelStore, tmp_path: Path
) -> None:
    versions = [store.add_version("m", blob(tmp_path, f"v{i}".encode())).version for i in range(3)]
    assert versions == [1, 2, 3]
    model = store.get_model("m")
    assert model.default == 1
    assert model.previous is None
    assert store.get_version("m").version == 1
    assert store.package_path(store.get_version("m", 2)).read_bytes() == b"v1"


def test_promote_and_rollback_move_default_and_previous(store: ModelStore, tmp_path: Path) -> None:
    for i in range(3):
        store.add_version("m", blob(tmp_path, f"v{i}".encode()))
    model = store.promote("m", 3)
    assert (model.default, model.previous) == (3, 1)
    model = store.rollback("m")
    assert (model.default, model.previous) == (1, 3)
    model = store.rollback("m")  # a second rollback undoes the first
    assert (model.default, model.previous) == (3, 1)
    assert store.add_version("m", blob(tmp_path, b"v3"), promote=True).version == 4
    assert store.get_model("m").default == 4


def test_rollback_without_a_previous_version_is_a_conflict(
    store: ModelStore, tmp_path: Path
) -> None:
    store.add_version("m", blob(tmp_path, b"a"))
    with pytest.raises(Conflict, match="no previous version"):
        store.rollback("m")


def test_the_default_version_cannot_be_deleted(store: ModelStore, tmp_path: Path) -> None:
    store.add_version("m", blob(tmp_path, b"a"))
    store.add_version("m", blob(tmp_path, b"b"))
    with pytest.raises(Conflict, match="is the default"):
        store.delete_version("m", 1)
    store.delete_version("m", 2)
    assert [v.version for v in store.get_model("m").versions] == [1]
    # Numbers are never reused.
    assert store.add_version("m", blob(tmp_path, b"c")).version == 3


def test_deleting_a_models_last_version_removes_the_model_but_not_its_numbers(
    store: ModelStore, tmp_path: Path
) -> None:
    store.add_version("m", blob(tmp_path, b"a"))
    store.add_version("keep", blob(tmp_path, b"k"))
    store.delete_version("m", 1, actor="dan")
    assert [m.name for m in store.list_models()] == ["keep"]
    with pytest.raises(NotFound, match="model 'm' not found"):
        store.get_model("m")
    assert store.audit("m")[0].detail.get("model_removed") is True
    again = store.add_version("m", blob(tmp_path, b"b"))
    assert again.version == 2
    assert store.get_model("m").default == 2


def test_unknown_models_and_versions_are_not_found(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="model 'nope' not found"):
        store.get_version("nope")
    store.add_version("m", blob(tmp_path, b"a"))
    with pytest.raises(NotFound, match="no version 7"):
        store.promote("m", 7)


def test_bad_model_names_are_refused(store: ModelStore, tmp_path: Path) -> None:
    for name in ("", "../x", "a b", "-x", "x" * 200):
        with pytest.raises(InvalidInput, match="model name"):
            store.add_version(name, blob(tmp_path, b"a"))
    assert store.list_models() == []


def test_every_change_is_in_the_audit_log(store: ModelStore, tmp_path: Path) -> None:
    store.add_version("m", blob(tmp_path, b"a"), actor="alice")
    store.add_version("m", blob(tmp_path, b"b"), actor="alice")
    store.promote("m", 2, actor="bob")
    store.rollback("m", actor="bob")
    store.set_config("m", 2, {"workers": 2}, actor="carol")
    store.delete_version("m", 2, actor="carol")
    actions = [(e.action, e.version, e.actor) for e in reversed(store.audit("m"))]
    assert actions == [
        ("upload", 1, "alice"),
        ("upload", 2, "alice"),
        ("promote", 2, "bob"),
        ("rollback", 1, "bob"),
        ("config", 2, "carol"),
        ("delete", 2, "carol"),
    ]


def test_rollouts_and_recordings_are_kept_per_model(store: ModelStore, tmp_path: Path) -> None:
    store.add_version("m", blob(tmp_path, b"a"))
    store.add_version("m", blob(tmp_path, b"b"))
    started = store.start_rollout(
        "m", candidate=2, mode="canary", share=0.2, sticky_header=None, rules={"min": 5}
    )
    assert (started.baseline, started.state) == (1, "running")
    with pytest.raises(Conflict, match="rollout running already"):
        store.start_rollout(
            "m", candidate=2, mode="shadow", share=1.0, sticky_header=None, rules={}
        )
    ended = store.end_rollout("m", "rolled_back", {"why": "errors"})
    assert ended.state == "rolled_back"
    assert ended.decision == {"why": "errors"}
    assert store.rollouts("m", running=True) == []
    assert [r.state for r in store.rollouts()] == ["rolled_back"]
    store.set_recording("m", {"rate": 0.5})
    assert store.recordings() == {"m": {"rate": 0.5}}
    store.set_recording("m", None)
    assert store.recordings() == {}


def test_a_long_audit_log_is_kept_whole(store: ModelStore, tmp_path: Path) -> None:
    store.add_version("m", blob(tmp_path, b"a"))
    store.add_version("m", blob(tmp_path, b"b"))
    for i in range(300):
        store.set_config("m", 1 + i % 2, {"workers": i})
    entries = store.audit("m", limit=1000)
    assert len(entries) == 302
    assert [e.detail.get("workers") for e in entries[:3]] == [299, 298, 297]
    assert entries[-1].action == "upload"
    assert len(store.audit("m", limit=10)) == 10
    history = store.history("m")
    assert [e.action for e in history.audit[:2]] == ["upload", "upload"]
    assert len(history.audit) == 302


@pytest.mark.parametrize(("source", "destination"), [("sqlite", "s3"), ("s3", "sqlite")])
def test_a_copy_keeps_versions_aliases_configs_rollouts_and_audit(
    source: str, destination: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    src, dst = _open(source, tmp_path, request), _open(destination, tmp_path, request)
    for content in (b"a", b"b", b"c"):
        src.add_version("m", blob(tmp_path, content), metadata={"content": content.decode()})
    src.promote("m", 3, actor="alice")
    src.delete_version("m", 2)
    src.set_config("m", 1, {"workers": 3})
    src.start_rollout("m", candidate=1, mode="shadow", share=1.0, sticky_header="x", rules={})
    src.add_version("other", blob(tmp_path, b"o"))
    for name in ("m", "other"):
        dst.restore(src.history(name), src.package_path)
    copied = dst.get_model("m")
    assert (copied.default, copied.previous) == (3, 1)
    assert [v.version for v in copied.versions] == [1, 3]
    assert dst.get_version("m", 1).config == {"workers": 3}
    assert dst.get_version("m", 3).metadata == {"content": "c"}
    assert dst.package_path(dst.get_version("m", 3)).read_bytes() == b"c"
    assert [(e.action, e.version, e.actor) for e in dst.audit("m")] == [
        (e.action, e.version, e.actor) for e in src.audit("m")
    ]
    assert [e.at for e in dst.audit("m")] == [e.at for e in src.audit("m")]
    assert dst.rollouts("m", running=True)[0].sticky_header == "x"
    # Numbers go on where the source left them, and a second copy is refused whole.
    assert dst.add_version("m", blob(tmp_path, b"d")).version == 4
    with pytest.raises(Conflict, match="already"):
        dst.restore(src.history("other"), src.package_path)
    assert dst.verify() == []
