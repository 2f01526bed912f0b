"""Client arguments built from the Kafka configuration."""

from __future__ import annotations

import ssl

import pytest

from mulambda.errors import ConfigurationError
from mulambda.kafka import KafkaConfig

pytestmark = pytest.mark.unit


def test_plaintext_arguments() -> None:
    kwargs = KafkaConfig(
        bootstrap_servers="k:9092", request_timeout_s=2.5, client_id="r"
    ).client_kwargs()
    assert kwargs == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "PLAINTEXT",
        "client_id": "r",
        "request_timeout_ms": 2500,
    }


def test_sasl_needs_every_credential() -> None:
    with pytest.raises(ConfigurationError, match="SASL needs"):
        KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN").client_kwargs()
    kwargs = KafkaConfig(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password="p",  # noqa: S106 - a test credential, no server involved
    ).client_kwargs()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("u", "p")
    assert "ssl_context" not in kwargs


def test_ssl_gets_a_context() -> None:
    kwargs = KafkaConfig(security_protocol="SSL").client_kwargs()
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
