"""Package signatures (Ed25519): who built a package, on top of the hashes that say it is
intact. A signature covers `MANIFEST.json` byte for byte, and the manifest holds the
sha256 of every other file, so a signed package cannot change anywhere without failing
one or the other.

The signature travels inside the package as `SIGNATURE.json` (the one member the manifest
does not list): `{"algorithm": "ed25519", "key": KEY_ID, "signature": BASE64}`, where
KEY_ID is the first 16 hex digits of the sha256 of the raw public key. `cryptography` is
needed only here (`pip install 'torchport[sign]'`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torchport.archive.manifest import MANIFEST_NAME
from torchport.errors import InvalidInput, PackageError, Untrusted

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SIGNATURE_NAME = "SIGNATURE.json"
SIGNATURE_MAX = 4096
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public: Ed25519PublicKey
    source: str


def generate_key(private_out: Path) -> tuple[Path, str]:
    """Write a new private key (PEM, mode 0600) to `private_out` and its public key next
    to it (`<name>.pub`); returns the public key's path and id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if private_out.exists():
        raise InvalidInput(f"{private_out} exists already: keys are never overwritten",
                           field="key")  # fmt: skip
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_out = private_out.with_name(private_out.name + ".pub")
    public_out.write_bytes(public_pem)
    return public_out, key_id(key.public_key())


def key_id(public: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise InvalidInput(f"cannot read the key {path}: {exc.strerror}", field="key") from None
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{path} is not an unencrypted PEM private key: {exc}",
                           field="key") from None  # fmt: skip
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} is not an Ed25519 key (torchport keygen makes one)",
                           field="key")  # fmt: skip
    return key


def load_trusted_keys(paths: Sequence[Path]) -> list[TrustedKey]:
    """The public keys (PEM) uploads may be signed with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = []
    for path in paths:
        try:
            public = serialization.load_pem_public_key(path.read_bytes())
        except OSError as exc:
            raise InvalidInput(f"cannot read the trusted key {path}: {exc.strerror}",
                               field="trusted_keys") from None  # fmt: skip
        except ValueError as exc:
            raise InvalidInput(f"{path} is not a PEM public key: {exc}",
                               field="trusted_keys") from None  # fmt: skip
        if not isinstance(public, Ed25519PublicKey):
            raise InvalidInput(f"{path} is not an Ed25519 public key", field="trusted_keys")
        keys.append(TrustedKey(key_id(public), public, str(path)))
    return keys


def sign_package(package: Path, key_path: Path, out: Path | None = None) -> str:
    """Sign `package` with the private key at `key_path`, in place or into `out`
    (a signature already there is replaced). Returns the key id."""
    key = load_private_key(key_path)
    target = out or package
    with zipfile.ZipFile(package) as zf:
        try:
            manifest = zf.read(MANIFEST_NAME)
        except KeyError:
            raise PackageError(f"{package.name} is not a torchport package: no {MANIFEST_NAME}",
                               field="package") from None  # fmt: skip
        resign = SIGNATURE_NAME in zf.namelist()
    signature = {
        "algorithm": "ed25519",
        "key": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(manifest)).decode(),
    }
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if resign:
            with zipfile.ZipFile(package) as src, zipfile.ZipFile(tmp, "w") as dst:
                for info in src.infolist():
                    if info.filename != SIGNATURE_NAME:
                        dst.writestr(info, src.read(info), compress_type=info.compress_type)
        else:
            shutil.copyfile(package, tmp)
        with zipfile.ZipFile(tmp, "a") as zf:
            info = zipfile.ZipInfo(SIGNATURE_NAME, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, json.dumps(signature, indent=2) + "\n")
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(signature["key"])


def read_signature(zf: zipfile.ZipFile) -> dict[str, str] | None:
    """The package's signature record, checked for shape (not yet for truth)."""
    if SIGNATURE_NAME not in zf.namelist():
        return None
    if zf.getinfo(SIGNATURE_NAME).file_size > SIGNATURE_MAX:
        raise PackageError(f"{SIGNATURE_NAME} is over {SIGNATURE_MAX} bytes")
    try:
        record = json.loads(zf.read(SIGNATURE_NAME))
    except (ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise PackageError(f"{SIGNATURE_NAME} is not valid JSON: {exc}") from None
    if (
        not isinstance(record, dict)
        or record.get("algorithm") != "ed25519"
        or not all(isinstance(record.get(k), str) for k in ("key", "signature"))
    ):
        raise PackageError(f'{SIGNATURE_NAME} must be {{"algorithm": "ed25519", "key", '
                           '"signature"}')  # fmt: skip
    return {k: str(record[k]) for k in ("algorithm", "key", "signature")}


def check_signature(package: Path, trusted: Sequence[TrustedKey]) -> str:
    """The id of the trusted key that signed `package`; `Untrusted` if it is unsigned, or
    signed by no trusted key, or its signature does not match its manifest."""
    from cryptography.exceptions import InvalidSignature

    try:
        with zipfile.ZipFile(package) as zf:
            record = read_signature(zf)
            manifest = zf.read(MANIFEST_NAME)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, zlib.error) as exc:
        raise PackageError(f"{package.name} is not a torchport package ({exc})") from None
    if record is None:
        raise Untrusted(
            "this server takes only signed packages (trusted_keys): sign it with "
            "torchport sign PACKAGE --key KEY",
            field="package",
        )
    by_id = {k.key_id: k for k in trusted}
    key = by_id.get(record["key"])
    if key is None:
        raise Untrusted(f"the package is signed by key {record['key']}, which this server "
                        "does not trust (trusted_keys)", field="package")  # fmt: skip
    try:
        key.public.verify(base64.b64decode(record["signature"], validate=True), manifest)
    except (InvalidSignature, ValueError):
        raise Untrusted(f"the package's signature does not match its manifest for key "
                        f"{record['key']}: it was changed after signing",
                        field="package") from None  # fmt: skip
    return key.key_id
