"""The one error tree.

Every failure torchport reports is a `TorchportError` with a neutral `code`; each transport
(CLI, HTTP, gRPC) maps the codes once to its own status values. Messages are one line and
name the field and the problem.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import ClassVar


class TorchportError(Exception):
    """Base of every error torchport raises on purpose."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.counted = False
        """Whether the request it refused is already in the server's metrics."""

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, str]:
        """The JSON body every transport sends: `{"error": ..., "code": ...[, "field": ...]}`."""
        body = {"error": self.message, "code": self.code}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidInput(TorchportError):
    """A request or an argument does not match what was declared (signature, option)."""

    code = "invalid_input"


class PackageError(TorchportError):
    """A model package cannot be read, written or trusted."""

    code = "invalid_package"


class Untrusted(PackageError):
    """A package that is unsigned, or not signed by a key the server trusts."""

    code = "untrusted_package"


class IntegrityError(PackageError):
    """A file in a package does not hash to what its manifest says."""

    code = "integrity_error"


class UnsafeContent(PackageError):
    """Content refused for safety: path traversal, links, pickles, zip bombs."""

    code = "unsafe_content"


class TooLarge(TorchportError):
    """A package or a request exceeds a configured size limit."""

    code = "too_large"


class ModelLoadError(TorchportError):
    """A package is well formed but its model or handler fails to load or run."""

    code = "model_load_failed"


class NotFound(TorchportError):
    """A model, version or file that does not exist."""

    code = "not_found"


class Forbidden(TorchportError):
    """An operation never allowed here: a URL outside the allow-list, removing the default
    version another version depends on."""

    code = "forbidden"


class Conflict(TorchportError):
    """An operation the current state refuses (e.g. deleting the default version)."""

    code = "conflict"


class StoreError(TorchportError):
    """The model store is unreadable, locked for too long, or inconsistent."""

    code = "store_error"


class InsufficientStorage(TorchportError):
    """A disk (the store's, or the one temporary files go to) has no room left."""

    code = "insufficient_storage"


def out_of_space(exc: OSError, path: Path, needed: int | None = None) -> TorchportError | None:
    """`InsufficientStorage` naming `path` and the room it lacks if `exc` says the disk is
    full (or over quota), else None: every place that writes answers a full disk alike."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    try:
        free = f"{shutil.disk_usage(path if path.is_dir() else path.parent).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    need = f"{needed:,} bytes needed, " if needed is not None else ""
    return InsufficientStorage(f"no space left on the disk of {path} ({need}{free})")


class Unauthorized(TorchportError):
    """A missing or wrong management token."""

    code = "unauthorized"


class Unavailable(TorchportError):
    """A model or version exists but is not loaded (unloaded, or failed to load)."""

    code = "unavailable"


class Overloaded(TorchportError):
    """A queue is full; the caller should retry later."""

    code = "overloaded"


class DeadlineExceeded(TorchportError):
    """A request's deadline passed before it could be served."""

    code = "deadline_exceeded"


class RequestTimeout(TorchportError):
    """A client took longer than allowed to send its request."""

    code = "request_timeout"


class UnsupportedMediaType(InvalidInput):
    """A request body in a content type the route does not read."""

    code = "unsupported_media_type"


class NotAcceptable(InvalidInput):
    """An `Accept` header asking for an answer in no format the route can write."""

    code = "not_acceptable"


def error_for(code: str, message: str, field: str | None = None) -> TorchportError:
    """The error of class `code` (as `TorchportError.code` names it), for errors that come
    back as plain data from another process."""
    classes = [TorchportError]
    while classes:
        cls = classes.pop()
        if cls.code == code:
            return cls(message, field=field)
        classes.extend(cls.__subclasses__())
    return TorchportError(message, field=field)
