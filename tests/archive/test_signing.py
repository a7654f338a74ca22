"""Package signatures: a team signs what its CI built, and a server with `trusted_keys`
takes nothing else — unsigned, signed by another key, or changed after signing."""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from tests.cli.test_cli import assert_one_line_error, cli
from tests.helpers import edit_manifest, members, write_zip
from tests.inprocess import in_process
from torchport.archive import read_package, unpack_package
from torchport.archive.signing import (
    SIGNATURE_NAME,
    check_signature,
    generate_key,
    load_trusted_keys,
    sign_package,
)
from torchport.errors import IntegrityError, Untrusted


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Our key (private, public) and a stranger's public key."""
    ours = tmp_path / "ours.key"
    generate_key(ours)
    theirs = tmp_path / "theirs.key"
    generate_key(theirs)
    return ours, Path(f"{ours}.pub"), Path(f"{theirs}.pub")


def signed_copy(package: Path, key: Path, dest: Path) -> Path:
    shutil.copyfile(package, dest)
    sign_package(dest, key)
    return dest


def test_a_signed_package_verifies_and_reads_as_before(
    mlp_package: Path, keys: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    private, public, stranger = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    signed = signed_copy(mlp_package, private, tmp_path / "mlp.tpa")
    [trusted] = load_trusted_keys([public])
    assert check_signature(signed, [trusted]) == trusted.key_id
    assert read_package(signed).manifest == read_package(mlp_package).manifest
    unpacked = unpack_package(signed, tmp_path / "files")
    assert not (tmp_path / "files" / SIGNATURE_NAME).exists()
    assert unpacked.manifest.name == "mlp"
    # Signing again (another key) replaces the signature: one member, the new key.
    sign_package(signed, stranger.with_suffix(""))
    with zipfile.ZipFile(signed) as zf:
        assert zf.namelist().count(SIGNATURE_NAME) == 1
    with pytest.raises(Untrusted, match="which this server does not trust"):
        check_signature(signed, [trusted])


def test_unsigned_and_changed_packages_are_untrusted(
    mlp_package: Path, keys: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    private, public, _ = keys
    trusted = load_trusted_keys([public])
    with pytest.raises(Untrusted, match="takes only signed packages"):
        check_signature(mlp_package, trusted)
    signed = signed_copy(mlp_package, private, tmp_path / "signed.tpa")

    def describe(m: dict[str, object]) -> dict[str, object]:
        return {**m, "description": "changed after signing"}

    changed = edit_manifest(signed, tmp_path / "changed.tpa", describe)
    with pytest.raises(Untrusted, match="does not match its manifest"):
        check_signature(changed, trusted)
    # A changed file keeps the manifest (and so the signature) but fails its hash.
    files = members(signed)
    weights = next(name for name in files if name.endswith(".safetensors"))
    files[weights] += b"\0"
    tampered = write_zip(tmp_path / "tampered.tpa", files)
    assert check_signature(tampered, trusted)  # the manifest is as signed...
    with pytest.raises(IntegrityError, match="changed after packaging"):
        read_package(tampered)  # ... and the file is not as the manifest says


def test_a_server_with_trusted_keys_takes_only_what_they_signed(
    mlp_package: Path, keys: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    private, public, stranger = keys
    signed = signed_copy(mlp_package, private, tmp_path / "mlp.tpa")
    with in_process(tmp_path / "store", [signed], trusted_keys=[public]) as server:

        def upload(package: Path) -> tuple[int, dict[str, object]]:
            r = server.admin.post("/models/mlp", content=package.read_bytes(), headers=server.auth)
            return r.status_code, r.json()

        assert upload(signed)[0] == 201
        status, body = upload(mlp_package)
        assert (status, body["code"], body["field"]) == (403, "untrusted_package", "package")
        other = signed_copy(mlp_package, stranger.with_suffix(""), tmp_path / "other.tpa")
        assert upload(other)[0] == 403
        assert [v.version for v in server.store.get_model("mlp").versions] == [1, 2]


def test_keygen_sign_and_inspect_from_the_shell(mlp_package: Path, tmp_path: Path) -> None:
    key = tmp_path / "ci.key"
    made = cli("keygen", key)
    assert made.returncode == 0, made.stderr
    assert key.exists()
    assert Path(f"{key}.pub").exists()
    assert_one_line_error(cli("keygen", key), "exists already")
    out = tmp_path / "signed.tpa"
    signed = cli("sign", mlp_package, "--key", key, "--out", out)
    assert signed.returncode == 0, signed.stderr
    assert "signed by key" in cli("inspect", out).stdout
    assert "not signed" in cli("inspect", mlp_package).stdout
    assert_one_line_error(cli("sign", mlp_package, "--key", mlp_package), "not an unencrypted PEM")
