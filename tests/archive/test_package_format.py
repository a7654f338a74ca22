"""The package format: what is written is read back bit for bit, and nothing else is."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import edit_manifest, members, rewrite, write_zip
from torchport.archive import (
    MANIFEST_NAME,
    Manifest,
    ModelEntry,
    ModelKind,
    read_package,
    unpack_package,
    write_package,
)
from torchport.archive.manifest import FORMAT_VERSION, now
from torchport.errors import IntegrityError, NotFound, PackageError, TooLarge, UnsafeContent
from torchport.settings import Limits
from torchport.types import Datatype, Signature, TensorSpec

SIG = Signature(
    inputs=[TensorSpec(name="input", datatype=Datatype.FP32, shape=[-1, 4])],
    outputs=[TensorSpec(name="output", datatype=Datatype.FP32, shape=[-1, 2])],
)


def manifest(model_file: str = "model.pt2") -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        name="m",
        created_at=now(),
        torchport_version="0",
        torch_version="0",
        model=ModelEntry(kind=ModelKind.EXPORTED, file=model_file),
        signature=SIG,
        files={},
    )


member_names = st.lists(
    st.text(alphabet="abcdefghij_-.0123456789", min_size=1, max_size=8).filter(
        lambda s: s not in (".", "..")
    ),
    min_size=1,
    max_size=3,
).map("/".join)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(member_names, st.binary(max_size=2048), min_size=1, max_size=5))
def test_archive_round_trip_returns_every_file_and_the_manifest(
    tmp_path: Path, files: dict[str, bytes]
) -> None:
    # Names where one is a directory of another cannot both exist on disk.
    names = sorted(files)
    if any(b.startswith(a + "/") for a in names for b in names) or MANIFEST_NAME in files:
        return
    src = tmp_path / f"src-{os.urandom(4).hex()}"
    sources = {}
    for name, data in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sources[name] = path
    out = tmp_path / f"{src.name}.tpa"
    first = names[0]
    written = write_package(out, manifest(first), sources)

    package = read_package(out)
    assert package.manifest == written
    assert set(package.manifest.files) == set(files)
    dest = tmp_path / f"{src.name}-unpacked"
    unpack_package(out, dest)
    for name, data in files.items():
        assert (dest / name).read_bytes() == data


@pytest.fixture
def good(tmp_path: Path) -> Path:
    model = tmp_path / "model.pt2"
    model.write_bytes(b"program bytes")
    extra = tmp_path / "labels.txt"
    extra.write_text("cat\ndog\n")
    out = tmp_path / "good.tpa"
    write_package(out, manifest(), {"model.pt2": model, "labels.txt": extra})
    return out


def test_a_file_changed_after_packaging_is_refused(good: Path, tmp_path: Path) -> None:
    def tamper(files: dict[str, bytes]) -> dict[str, bytes]:
        files["labels.txt"] = b"cat\nwolf\n"
        return files

    bad = rewrite(good, tmp_path / "bad.tpa", tamper)
    with pytest.raises(IntegrityError, match="'labels.txt' was changed after packaging"):
        read_package(bad)
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError):
        unpack_package(bad, dest)
    assert not (dest / "labels.txt").exists()


def test_a_truncated_package_is_refused(good: Path, tmp_path: Path) -> None:
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        bad = tmp_path / f"cut{cut}.tpa"
        bad.write_bytes(data[:cut])
        with pytest.raises(PackageError, match="not a zip file, or truncated|corrupt"):
            read_package(bad)


def test_a_corrupted_byte_inside_a_member_is_refused(good: Path, tmp_path: Path) -> None:
    data = bytearray(good.read_bytes())
    offset = data.find(b"program bytes")
    data[offset] ^= 0xFF
    bad = tmp_path / "flipped.tpa"
    bad.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.pt2"):
        read_package(bad)


@pytest.mark.parametrize(
    "name",
    ["../evil.py", "a/../../evil.py", "/etc/passwd", "C:/evil", "a\\..\\evil", "a//b", "./x"],
)
def test_paths_that_escape_the_package_are_refused(good: Path, tmp_path: Path, name: str) -> None:
    files = members(good)
    files[name] = b"x"
    bad = write_zip(tmp_path / "escape.tpa", files)
    with pytest.raises(UnsafeContent, match="package member"):
        unpack_package(bad, tmp_path / "dest")
    assert not (tmp_path / "evil.py").exists()


def test_links_inside_a_package_are_refused(good: Path, tmp_path: Path) -> None:
    files = members(good)
    files["link"] = b"/etc/passwd"
    bad = write_zip(tmp_path / "link.tpa", files, symlinks=("link",))
    with pytest.raises(UnsafeContent, match="link"):
        read_package(bad)


def test_a_file_not_listed_in_the_manifest_is_refused(good: Path, tmp_path: Path) -> None:
    files = members(good)
    files["smuggled.py"] = b"import os"
    with pytest.raises(IntegrityError, match="'smuggled.py' is in the package but not in"):
        read_package(write_zip(tmp_path / "extra.tpa", files))


def test_a_file_listed_but_missing_is_refused(good: Path, tmp_path: Path) -> None:
    files = members(good)
    del files["labels.txt"]
    with pytest.raises(IntegrityError, match="'labels.txt' is in the manifest but missing"):
        read_package(write_zip(tmp_path / "missing.tpa", files))


def test_a_manifest_with_an_unknown_key_is_refused(good: Path, tmp_path: Path) -> None:
    def add_key(m: dict[str, Any]) -> dict[str, Any]:
        return {**m, "entrypoint": "os.system"}

    with pytest.raises(PackageError, match="unknown key 'entrypoint'"):
        read_package(edit_manifest(good, tmp_path / "key.tpa", add_key))

    def nested(m: dict[str, Any]) -> dict[str, Any]:
        m["model"]["pickle"] = True
        return m

    with pytest.raises(PackageError, match="unknown key 'model.pickle'"):
        read_package(edit_manifest(good, tmp_path / "nested.tpa", nested))


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_a_wrong_format_version_is_refused(good: Path, tmp_path: Path, version: object) -> None:
    def set_version(m: dict[str, Any]) -> dict[str, Any]:
        return {**m, "format_version": version}

    with pytest.raises(PackageError, match="format_version .* is not supported"):
        read_package(edit_manifest(good, tmp_path / "v.tpa", set_version))


def test_a_manifest_that_is_not_json_is_refused(good: Path, tmp_path: Path) -> None:
    def garble(files: dict[str, bytes]) -> dict[str, bytes]:
        files[MANIFEST_NAME] = b"{not json"
        return files

    with pytest.raises(PackageError, match="not valid JSON"):
        read_package(rewrite(good, tmp_path / "garbled.tpa", garble))


def test_a_package_over_the_size_limit_is_refused_before_it_is_opened(good: Path) -> None:
    with pytest.raises(TooLarge, match="over the limit"):
        read_package(good, Limits(max_package_bytes=100))


def test_a_zip_bomb_is_refused_by_its_unpacked_size(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tpa"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST_NAME, json.dumps({"format_version": 1}))
        zf.writestr("zeros.bin", b"\0" * (20 * 1024 * 1024))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(TooLarge, match="unpacks to"):
        read_package(bomb, Limits(max_unpacked_bytes=10 * 1024 * 1024))


def test_a_missing_package_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        read_package(tmp_path / "nope.tpa")


def test_writing_refuses_unsafe_names_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    out = tmp_path / "out.tpa"
    with pytest.raises(UnsafeContent):
        write_package(out, manifest(), {"../f": src})
    assert not out.exists()
    assert list(tmp_path.glob("*.tmp")) == []


def _patch_every_header(path: Path, *, flags: int = 0, method: int | None = None) -> Path:
    """Set general-purpose flag bits or the compression method in every local and central
    header, as another zip tool (or an attacker) could have written them."""
    raw = bytearray(path.read_bytes())
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = raw.find(signature)
        while at >= 0:
            raw[at + flag_at] |= flags
            if method is not None:
                raw[at + method_at : at + method_at + 2] = method.to_bytes(2, "little")
            at = raw.find(signature, at + 4)
    path.write_bytes(bytes(raw))
    return path


def test_an_encrypted_member_is_refused_before_it_is_read(good: Path, tmp_path: Path) -> None:
    bad = _patch_every_header(rewrite(good, tmp_path / "enc.tpa", dict), flags=0x1)
    with pytest.raises(UnsafeContent, match="is encrypted"):
        read_package(bad)


def test_a_compression_method_zipfile_cannot_read_is_refused(good: Path, tmp_path: Path) -> None:
    bad = _patch_every_header(rewrite(good, tmp_path / "aes.tpa", dict), method=99)
    with pytest.raises(PackageError, match="compression method 99"):
        read_package(bad)


def test_a_deeply_nested_manifest_is_refused(good: Path, tmp_path: Path) -> None:
    def nest(files: dict[str, bytes]) -> dict[str, bytes]:
        files[MANIFEST_NAME] = files[MANIFEST_NAME].rstrip()[:-1] + (
            b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        )
        return files

    with pytest.raises(PackageError, match="nested too deeply"):
        read_package(rewrite(good, tmp_path / "deep.tpa", nest))


def test_a_member_that_is_also_a_folder_is_refused_and_nothing_is_unpacked(
    good: Path, tmp_path: Path
) -> None:
    def both(m: dict[str, Any]) -> dict[str, Any]:
        m["files"]["a"] = m["files"]["a/b"] = m["files"]["labels.txt"]
        return m

    files = members(edit_manifest(good, tmp_path / "m.tpa", both))
    files["a"] = files["a/b"] = files["labels.txt"]
    bad = write_zip(tmp_path / "ab.tpa", files)
    with pytest.raises(UnsafeContent, match="'a' is both a file and a folder"):
        unpack_package(bad, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("part", ["inputs", "outputs"])
def test_an_example_must_name_every_input_and_output(good: Path, tmp_path: Path, part: str) -> None:
    def example(m: dict[str, Any]) -> dict[str, Any]:
        ex = {"inputs": {"input": [[0.0] * 4]}, "outputs": {"output": [[0.0] * 2]}}
        ex[part] = {}
        m["examples"] = [ex]
        return m

    with pytest.raises(PackageError, match=rf"examples\[0\]\.{part} lacks"):
        read_package(edit_manifest(good, tmp_path / "ex.tpa", example))
