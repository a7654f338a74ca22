"""The management token: from settings (`TORCHPORT_TOKEN`) or generated once per store."""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from torchport.errors import StoreError, Unauthorized

TOKEN_FILE = "token"


def resolve_token(configured: str | None, store_root: Path) -> str:
    """The configured token, else `<store>/token`, created (mode 0600) on first start."""
    if configured:
        return configured
    path = store_root / TOKEN_FILE
    try:
        if not path.exists():
            _create(path, secrets.token_urlsafe(32))
        token = path.read_text().strip()
    except OSError as exc:
        raise StoreError(f"cannot read or create the token file {path}: {exc.strerror}") from None
    if len(token) < MIN_TOKEN:
        # Never serve with a token anyone could guess, nor lock management silently.
        raise StoreError(
            f"the token file {path} holds {'no token' if not token else 'a token too short'} "
            f"(at least {MIN_TOKEN} characters): delete it to have a new one made, or set "
            "TORCHPORT_TOKEN"
        )
    return token


MIN_TOKEN = 16


def _create(path: Path, token: str) -> None:
    """Write the token whole or not at all: into a private file, fsynced, then linked into
    place (failing if another server made one meanwhile: that one wins) and the folder
    fsynced."""
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=".token-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(staged, path)
    finally:
        os.unlink(staged)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def check_bearer(authorization: str | None, token: str) -> None:
    """Raise `Unauthorized` unless `authorization` is `Bearer <token>` (constant-time compare)."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("wrong bearer token")
