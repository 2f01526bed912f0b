"""Client construction: Kafka settings as in the workers, topics, argument checks."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydantic import SecretStr

import mulambda
from mulambda.errors import ConfigurationError
from mulambda.kafka import KafkaConfig
from mulambda.routing.client import Client, ClientClosed
from mulambda.runtime.settings import Settings


def test_keyword_arguments_mirror_kafka_config() -> None:
    client = Client(
        bootstrap_servers="broker:9093",
        client_id="app-1",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password="p",  # noqa: S106  # a test value
        ssl_cafile="/ca.pem",
        request_timeout_s=3.0,
        topic_prefix="team.",
    )
    assert client.config == KafkaConfig(
        bootstrap_servers="broker:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password="p",  # noqa: S106  # a test value
        ssl_cafile="/ca.pem",
        request_timeout_s=3.0,
        client_id="app-1",
    )
    assert client.client_id == "app-1"
    assert client.catalog.prefix == "team."
    assert not client.started


def test_from_settings_reads_kafka_security_and_topic_prefix() -> None:
    settings = Settings(
        kafka_bootstrap_servers="k:9092",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="user",
        kafka_sasl_password=SecretStr("secret"),
        topic_prefix="x.",
    )
    client = Client.from_settings(settings, "app-2", default_deadline_s=5.0)
    assert client.config == KafkaConfig.from_settings(settings, "app-2")
    assert client.config.sasl_password == "secret"  # noqa: S105  # a test value
    assert client.catalog.prefix == "x."
    assert client.default_deadline_s == 5.0


@pytest.mark.parametrize("kwargs", [{"default_deadline_s": 0}, {"results_buffer": 0}])
def test_bad_client_arguments_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        Client(**kwargs)  # type: ignore[arg-type]


async def test_calls_before_start_raise_client_closed() -> None:
    client = Client()
    with pytest.raises(ClientClosed):
        await client.infer(traits={}, instances=[1])
    with pytest.raises(ClientClosed):
        await client.submit(traits={}, instances=[1])
    with pytest.raises(ClientClosed):
        _ = client.reply_partition
    await client.stop()  # stopping a client never started is fine


def test_the_package_exports_the_sdk() -> None:
    assert mulambda.Client is Client
    assert issubclass(mulambda.InferenceFailed, mulambda.MulambdaError)
    assert issubclass(mulambda.ClientClosed, mulambda.MulambdaError)
    assert mulambda.RequestTimeout.retriable


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("traits", {"model_type": "m", "input_format": "i", "output_format": "o", "modle": "x"}),
        ("weights", {"latency": 0.9, "acuracy": 0.1}),
        ("slo", {"max_latency": 50}),
    ],
)
def test_unknown_keys_an_application_passes_are_typos_and_refused(
    field: str, value: dict[str, object]
) -> None:
    # The wire models ignore unknown fields (forward compatible); the SDK must not.
    client = Client(bootstrap_servers="127.0.0.1:1", client_id="c")
    replies = cast(Any, SimpleNamespace(reply_topic="r", reply_partition=0))
    arguments: dict[str, Any] = {
        "traits": {"model_type": "m", "input_format": "i", "output_format": "o"},
        "weights": None,
        "slo": None,
        field: value,
    }
    with pytest.raises(ConfigurationError, match=f"invalid request: {field}"):
        client._request(
            replies,
            5.0,
            body=None,
            inputs=None,
            instances=[1],
            policy=None,
            verb="predict",
            input_size=None,
            **arguments,
        )
