"""Registration secrets and keys: SecretStr settings from the environment or files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr, ValidationError

from mulambda.cli import cli
from mulambda.errors import ConfigurationError
from mulambda.runtime.settings import Settings
from mulambda.wire.signatures import executor_key

pytestmark = pytest.mark.unit


def test_secret_and_key_come_from_the_environment_or_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SECRET", "SECRET_FILE", "KEY", "KEY_FILE"):
        monkeypatch.delenv(f"MULAMBDA_REGISTRATION_{name}", raising=False)
    assert Settings().signing_key("ex-1") is None
    (tmp_path / "secret").write_text("s3cret\n")
    monkeypatch.setenv("MULAMBDA_REGISTRATION_SECRET_FILE", str(tmp_path / "secret"))
    settings = Settings()
    assert isinstance(settings.registration_secret, SecretStr)
    assert "s3cret" not in repr(settings)
    assert settings.signing_key("ex-1") == executor_key(b"s3cret", "ex-1")

    monkeypatch.delenv("MULAMBDA_REGISTRATION_SECRET_FILE")
    monkeypatch.setenv("MULAMBDA_REGISTRATION_KEY", executor_key(b"s3cret", "ex-1").hex())
    assert Settings().signing_key("ex-1") == executor_key(b"s3cret", "ex-1")
    monkeypatch.setenv("MULAMBDA_REGISTRATION_KEY", "not hex")
    with pytest.raises(ConfigurationError, match="not hex"):
        Settings().signing_key("ex-1")


def test_a_missing_secret_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MULAMBDA_REGISTRATION_SECRET_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValidationError, match="registration_secret_file"):
        Settings()


def test_executors_key_prints_the_derived_key(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.delenv("MULAMBDA_REGISTRATION_SECRET", raising=False)
    monkeypatch.delenv("MULAMBDA_REGISTRATION_SECRET_FILE", raising=False)
    refused = runner.invoke(cli, ["executors", "key", "ex-1"])
    assert refused.exit_code != 0
    assert "MULAMBDA_REGISTRATION_SECRET" in refused.output
    monkeypatch.setenv("MULAMBDA_REGISTRATION_SECRET", "s3cret")
    printed = runner.invoke(cli, ["executors", "key", "ex-1"])
    assert printed.exit_code == 0, printed.output
    assert printed.output.strip() == executor_key(b"s3cret", "ex-1").hex()
