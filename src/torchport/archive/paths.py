"""Which names may appear inside a package."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from torchport.errors import UnsafeContent

_DRIVE = re.compile(r"^[A-Za-z]:")


def check_member_name(name: str) -> str:
    """Return `name` if it is a plain relative POSIX path inside the package, else raise.

    Refuses absolute paths, `..` components, backslashes, drive letters and empty parts,
    so that nothing can be written outside the directory a package is unpacked into.
    """
    if not name or len(name) > 512:
        raise UnsafeContent(f"package member name {name!r:.80} is empty or too long")
    if "\\" in name or "\x00" in name or _DRIVE.match(name):
        raise UnsafeContent(f"package member '{name}' is not a plain relative path")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise UnsafeContent(f"package member '{name}' is an absolute path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeContent(
            f"package member '{name}' escapes the package (empty, '.' or '..' part)"
        )
    return name
