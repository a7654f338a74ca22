"""Peers that cannot share torchport's environment get one of their own under build/."""

from __future__ import annotations

import fcntl
import importlib.metadata
import subprocess
import sys
from pathlib import Path

SHARED = ("torch",)
"""Distributions linked from torchport's own environment rather than installed again:
torch is the same wheel (2.13.0 CPU) either way, and unpacking its gigabyte again is most
of a peer environment's set-up time."""


def ensure(venv: Path, packages: list[str], what: str) -> Path:
    """`venv` with `packages` installed (from PyPI; torch linked from this environment),
    made on first use (a minute or two); `what` names it in the one line said meanwhile."""
    stamp = venv / ".ready"
    wanted = "\n".join(sorted(packages))
    venv.parent.mkdir(parents=True, exist_ok=True)
    # One maker at a time (test workers may ask at once); the others wait, then find it.
    with (venv.parent / f".{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists() or stamp.read_text() != wanted:
            print(f"setting up {what} in {venv} …", file=sys.stderr)
            if not (venv / "bin" / "python").exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            _link_shared(venv)
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "--quiet", *packages],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            stamp.write_text(wanted)
    return venv


def _link_shared(venv: Path) -> None:
    """Link each `SHARED` distribution's packages and metadata into `venv` (pip then finds
    it installed); where this environment lacks one, pip installs it as usual."""
    site = next((venv / "lib").glob("python3*/site-packages"))
    for name in SHARED:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        info = Path(str(dist._path))  # type: ignore[attr-defined]  # its .dist-info
        top = (dist.read_text("top_level.txt") or name).split()
        for entry in [info, *(info.parent / t for t in top)]:
            link = site / entry.name
            if entry.exists() and not link.exists():
                link.symlink_to(entry, target_is_directory=entry.is_dir())
