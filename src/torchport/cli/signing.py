"""`torchport keygen` and `torchport sign`: who built a package, for servers that take
only packages their team signed (`trusted_keys`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from torchport.cli.output import out

Opt = typer.Option


def keygen_cmd(
    key: Annotated[Path, typer.Argument(help="Where to write the private key (PEM).")],
) -> None:
    """Make an Ed25519 key pair: KEY (private, mode 0600) and KEY.pub (give servers this
    one: trusted_keys)."""
    from torchport.archive.signing import generate_key

    public, key_id = generate_key(key)
    out.print(f"wrote {key} (private: keep it secret) and {public} (key {key_id})")


def sign_cmd(
    package: Annotated[Path, typer.Argument(help="A package file (.tpa).")],
    key: Annotated[Path, Opt(help="The private key (torchport keygen).")],
    out_path: Annotated[
        Path | None, Opt("--out", "-o", help="Write the signed package here (default: in place).")
    ] = None,
) -> None:
    """Verify a package (every hash), then sign its manifest with KEY."""
    from torchport.archive import read_package
    from torchport.archive.signing import sign_package

    read_package(package)  # a package that is not intact is never signed
    key_id = sign_package(package, key, out_path)
    out.print(f"signed {out_path or package} with key {key_id}")
