"""Uploads fuzzed: hypothesis breaks a real package every way a disk, a network or an
attacker could (flipped and cut bytes, members dropped, duplicated, renamed or replaced,
manifests with any JSON in any field); every upload is refused with a 4xx naming the
problem, or — if still whole — taken, and the store never holds a broken version."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.inprocess import InProcess, in_process

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)


json_values = st.recursive(scalars, _containers, max_leaves=8)
MANIFEST_KEYS = [
    "format_version", "name", "model", "signature", "runtime", "files", "examples", "handler",
    "description", "export", "new_key",
]  # fmt: skip


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory, mlp_package: Path) -> Iterator[InProcess]:
    with in_process(tmp_path_factory.mktemp("fuzz-uploads") / "store", [mlp_package]) as server:
        yield server


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data)
    return out.getvalue()


@st.composite
def broken_packages(draw: st.DrawFn, original: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(original)) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    how = draw(st.sampled_from(["bytes", "truncate", "members", "manifest"]))
    if how == "bytes":
        raw = bytearray(original)
        for at in draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[at] = draw(st.integers(0, 255))
        return bytes(raw)
    if how == "truncate":
        return original[: draw(st.integers(0, len(original) - 1))]
    if how == "members":
        i = draw(st.integers(0, len(members) - 1))
        name, data = members[i]
        change = draw(st.sampled_from(["drop", "twice", "rename", "replace", "add"]))
        if change == "drop":
            members.pop(i)
        elif change == "twice":
            members.append((name, data))
        elif change == "rename":
            odd = st.sampled_from(["../x", "/abs", "a/../../b", "ok/é", name + "/"])
            members[i] = (draw(odd | st.text(min_size=1, max_size=12)), data)
        elif change == "replace":
            members[i] = (name, draw(st.binary(max_size=200)))
        else:
            members.append((draw(st.text(min_size=1, max_size=12)), draw(st.binary(max_size=50))))
        return _zip(members)
    manifest: dict[str, Any] = json.loads(dict(members)["MANIFEST.json"])
    key = draw(st.sampled_from(MANIFEST_KEYS))
    manifest[key] = draw(json_values)
    edited = json.dumps(manifest).encode()
    members = [(n, edited if n == "MANIFEST.json" else d) for n, d in members]
    return _zip(members)


def test_fuzzed_uploads_are_refused_with_a_4xx_and_the_store_stays_whole(
    uploads: InProcess, mlp_package: Path
) -> None:
    original = mlp_package.read_bytes()
    statuses: list[int] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(package=broken_packages(original))
    def upload(package: bytes) -> None:
        response = uploads.admin.post("/models/fuzzed", content=package, headers=uploads.auth)
        statuses.append(response.status_code)
        assert response.status_code in (201, 400, 403, 404, 413), response.text
        if response.status_code != 201:
            body = response.json()
            assert body["error"]
            assert body["code"] in ("invalid_package", "integrity_error", "unsafe_content",
                                    "model_load_failed", "invalid_input", "too_large")  # fmt: skip

    upload()
    assert statuses.count(400) > 100  # almost every break is caught
    assert uploads.store.verify() == []
    assert uploads.http.get("/v2/health/ready").status_code == 200
