"""Secret settings: from variables or files, never shown; Redis connection options."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from mulambda.errors import ConfigurationError
from mulambda.runtime.redis_connection import RedisConfig
from mulambda.runtime.settings import SECRET_SETTINGS, Settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MULAMBDA_"):
            monkeypatch.delenv(name)


def test_every_password_and_key_is_a_secret_setting() -> None:
    assert {"kafka_sasl_password", "redis_password", "minio_secret_key"} <= SECRET_SETTINGS
    for name in SECRET_SETTINGS:
        assert f"{name}_file" in Settings.model_fields, f"{name} has no file variant"


@pytest.mark.parametrize("name", ["kafka_sasl_password", "redis_password", "minio_secret_key"])
def test_a_secret_file_wins_over_the_variable(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / name
    path.write_text("from-the-file\n")  # the newline editors add is not part of it
    monkeypatch.setenv(f"MULAMBDA_{name.upper()}", "from-the-variable")
    monkeypatch.setenv(f"MULAMBDA_{name.upper()}_FILE", str(path))
    settings = Settings()
    value = getattr(settings, name)
    assert isinstance(value, SecretStr)
    assert value.get_secret_value() == "from-the-file"
    assert "from-the-file" not in repr(settings)
    assert "from-the-file" not in str(settings.model_dump())


def test_the_minio_access_key_may_come_from_a_file_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "access").write_text("ak-from-file")
    monkeypatch.setenv("MULAMBDA_MINIO_ACCESS_KEY_FILE", str(tmp_path / "access"))
    assert Settings().minio_access_key == "ak-from-file"


def test_a_missing_or_empty_secret_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MULAMBDA_REDIS_PASSWORD_FILE", str(tmp_path / "nope"))
    with pytest.raises(ValidationError, match="cannot read redis_password_file"):
        Settings()
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("MULAMBDA_REDIS_PASSWORD_FILE", str(tmp_path / "empty"))
    with pytest.raises(ValidationError, match="is empty"):
        Settings()


def test_redis_credentials_and_tls_arguments() -> None:
    config = RedisConfig(
        "rediss://r:6380/0",
        username="mulambda",
        password="pw-value",  # noqa: S106 - a test credential, no server involved
        ssl_cafile="/ca.pem",
    )
    assert config.client_kwargs() == {
        "username": "mulambda",
        "password": "pw-value",
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/ca.pem",
    }
    assert "pw-value" not in repr(config)
    assert RedisConfig().client_kwargs() == {}


def test_redis_tls_files_without_a_tls_url_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="use a rediss:// URL"):
        RedisConfig("redis://:pw@r:6379/0", ssl_cafile="/ca.pem").client_kwargs()


def test_redis_settings_build_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULAMBDA_REDIS_URL", "rediss://r:6380/0")
    monkeypatch.setenv("MULAMBDA_REDIS_USERNAME", "u")
    monkeypatch.setenv("MULAMBDA_REDIS_PASSWORD", "p")
    monkeypatch.setenv("MULAMBDA_REDIS_SSL_CAFILE", "/ca.pem")
    config = RedisConfig.from_settings(Settings())
    assert (config.url, config.username, config.password, config.ssl_cafile) == (
        "rediss://r:6380/0",
        "u",
        "p",
        "/ca.pem",
    )
