"""The management token: from settings (`TORCHPORT_TOKEN`) or generated once per store."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from torchport.errors import StoreError, Unauthorized

TOKEN_FILE = "token"


def resolve_token(configured: str | None, store_root: Path) -> str:
    """The configured token, else `<store>/token`, created (mode 0600) on first start."""
    if configured:
        return configured
    path = store_root / TOKEN_FILE
    try:
        if path.exists():
            token = path.read_text().strip()
            if token:
                return token
        token = secrets.token_urlsafe(32)
        # O_EXCL: two servers starting at once never overwrite each other's token.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token
    except FileExistsError:
        return path.read_text().strip()
    except OSError as exc:
        raise StoreError(f"cannot read or create the token file {path}: {exc.strerror}") from None


def check_bearer(authorization: str | None, token: str) -> None:
    """Raise `Unauthorized` unless `authorization` is `Bearer <token>` (constant-time compare)."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("wrong bearer token")
