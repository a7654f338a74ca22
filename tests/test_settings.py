"""Settings: flags over environment over file; unknown keys are errors; secure defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchport.errors import InvalidInput
from torchport.settings import load_settings


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
