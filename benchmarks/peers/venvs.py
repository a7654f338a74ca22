"""Peers that cannot share torchport's environment get one of their own under build/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def ensure(venv: Path, packages: list[str], what: str) -> Path:
    """`venv` with `packages` installed (from PyPI, torch from the local wheel), made on
    first use (a minute or two); `what` names it in the one line said meanwhile."""
    stamp = venv / ".ready"
    wanted = "\n".join(sorted(packages))
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"setting up {what} in {venv} …", file=sys.stderr)
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", *packages],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        stamp.write_text(wanted)
    return venv
