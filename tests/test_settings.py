"""Settings: flags over environment over file; unknown keys are errors; secure defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torchport.errors import InvalidInput
from torchport.settings import available_cores, default_frontends, load_settings


def test_defaults_bind_to_loopback_only() -> None:
    assert load_settings().host == "127.0.0.1"


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "torchport.toml"
    config.write_text("http_port = 9000\ngrpc_port = 9001\nmanagement_port = 9002\n")
    monkeypatch.setenv("TORCHPORT_GRPC_PORT", "7001")
    monkeypatch.setenv("TORCHPORT_MANAGEMENT_PORT", "7002")
    settings = load_settings(config, management_port=5002)
    assert (settings.http_port, settings.grpc_port, settings.management_port) == (9000, 7001, 5002)


def test_unknown_keys_and_bad_values_name_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "torchport.toml"
    config.write_text("htp_port = 1\n")
    with pytest.raises(InvalidInput, match="htp_port"):
        load_settings(config)
    config.write_text("http_port = 70000\n")
    with pytest.raises(InvalidInput, match="setting 'http_port'"):
        load_settings(config)


def test_cores_are_the_affinity_mask_capped_by_the_cgroup_quota(tmp_path: Path) -> None:
    mask = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert available_cores(quota) == mask
    quota.write_text("150000 100000\n")  # docker --cpus 1.5: two cores' worth of threads
    assert available_cores(quota) == min(mask, 2)
    quota.write_text("10000 100000\n")
    assert available_cores(quota) == 1
    assert available_cores(tmp_path / "absent") == mask


def test_front_ends_are_none_under_four_cores_then_one_per_two() -> None:
    assert [default_frontends(c) for c in (1, 2, 3, 4, 8, 16, 64)] == [0, 0, 0, 2, 4, 4, 4]
