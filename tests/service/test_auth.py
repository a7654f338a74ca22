"""The management token: generated once per store, private, compared in constant time."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from torchport.errors import StoreError, Unauthorized
from torchport.service.auth import check_bearer, resolve_token


def test_a_token_is_generated_once_into_the_store_with_mode_0600(tmp_path: Path) -> None:
    token = resolve_token(None, tmp_path)
    path = tmp_path / "token"
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_token(None, tmp_path) == token  # the same on every start


def test_a_configured_token_wins_and_writes_nothing(tmp_path: Path) -> None:
    assert resolve_token("configured-token-123456", tmp_path) == "configured-token-123456"
    assert not (tmp_path / "token").exists()


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer wrong", "secret-token-value"]
)
def test_anything_but_the_right_bearer_token_is_refused(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        check_bearer(header, "secret-token-value")


def test_the_right_bearer_token_passes() -> None:
    check_bearer("Bearer secret-token-value", "secret-token-value")
    check_bearer("bearer secret-token-value", "secret-token-value")


@pytest.mark.parametrize("content", ["", "\n", "short-token\n"])
def test_an_empty_or_short_token_file_is_refused_not_served_with(
    tmp_path: Path, content: str
) -> None:
    (tmp_path / "token").write_text(content)
    with pytest.raises(StoreError, match="delete it to have a new one made"):
        resolve_token(None, tmp_path)


def test_the_token_file_is_written_whole_and_leaves_nothing_else(tmp_path: Path) -> None:
    token = resolve_token(None, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]
    assert (tmp_path / "token").read_text() == token + "\n"
