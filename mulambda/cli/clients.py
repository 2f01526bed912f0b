"""``mulambda clients``: client registrations (where companions probe) and a probe server."""

from __future__ import annotations

import json
import sys

import click
from pydantic import ValidationError

from mulambda.cli.common import load_settings, run_async
from mulambda.cli.executors import BadArguments, describe_invalid
from mulambda.errors import ConfigurationError, MulambdaError
from mulambda.executors.probe import ProbeServer, deregister_client, read_clients, register_client
from mulambda.kafka import KafkaConfig, Producer
from mulambda.runtime.observability import configure_logging
from mulambda.runtime.runner import Service, run
from mulambda.runtime.settings import Settings
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from mulambda.wire.events import ClientRegistration


def _client_registration(client_id: str, probe_url: str, zone: str) -> ClientRegistration:
    try:
        return ClientRegistration(client_id=client_id, probe_url=probe_url, zone=zone)
    except ValidationError as exc:
        raise BadArguments(describe_invalid(exc)) from exc


@click.group()
def clients() -> None:
    """Clients on the compacted client-registrations topic, and their probe endpoint."""


@clients.command()
@click.option("--client-id", required=True, help="Unique id of the client.")
@click.option("--probe-url", required=True, help="URL companions GET to measure latency.")
@click.option("--zone", default="local", show_default=True, help="Zone/region of the client.")
def register(client_id: str, probe_url: str, zone: str) -> None:
    """Publish a client's registration and wait for the broker's ack."""
    registration = _client_registration(client_id, probe_url, zone)
    settings = load_settings()
    catalog = load_catalog(settings.topic_prefix)

    async def go() -> None:
        async with Producer(KafkaConfig.from_settings(settings, "mulambda-cli")) as producer:
            await register_client(producer, catalog, registration)

    run_async(go())
    click.echo(f"registered {client_id}")


@clients.command()
@click.argument("client_id")
def deregister(client_id: str) -> None:
    """Publish a tombstone for CLIENT_ID; companions stop probing it."""
    if not client_id.strip():
        raise BadArguments("CLIENT_ID must not be empty")
    settings = load_settings()
    catalog = load_catalog(settings.topic_prefix)
    config = KafkaConfig.from_settings(settings, "mulambda-cli")

    async def go() -> bool:
        known = client_id in await read_clients(config, catalog)
        async with Producer(config) as producer:
            await deregister_client(producer, catalog, client_id)
        return known

    if not run_async(go()):
        click.echo(f"note: {client_id} was not registered; tombstone written anyway", err=True)
    click.echo(f"deregistered {client_id}")


@clients.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of registrations.")
def list_(as_json: bool) -> None:
    """One line per live client: id, probe URL, zone."""
    settings = load_settings()
    catalog = load_catalog(settings.topic_prefix)
    found = run_async(read_clients(KafkaConfig.from_settings(settings, "mulambda-cli"), catalog))
    ordered = [found[k] for k in sorted(found)]
    if as_json:
        click.echo(json.dumps([c.model_dump(mode="json") for c in ordered], indent=2))
        return
    for client in ordered:
        click.echo(f"{client.client_id}\t{client.probe_url}\t{client.zone}")
    if not ordered:
        click.echo(f"no clients on {catalog.name(Topic.CLIENT_REGISTRATIONS)}", err=True)


class RegisteredProbe:
    """A probe server that registers its client at start and deregisters it on stop."""

    def __init__(
        self, server: ProbeServer, settings: Settings, catalog: Catalog, client_id: str, zone: str
    ) -> None:
        self._server = server
        self._producer = Producer(KafkaConfig.from_settings(settings, f"mulambda-{client_id}"))
        self._catalog = catalog
        self._client_id = client_id
        self._zone = zone
        self._registered = False

    async def start(self) -> None:
        """Serve, then register the server's URL."""
        await self._server.start()
        try:
            registration = ClientRegistration(
                client_id=self._client_id, probe_url=self._server.url, zone=self._zone
            )
        except ValidationError as exc:
            raise ConfigurationError(describe_invalid(exc)) from exc
        await self._producer.start()
        await register_client(self._producer, self._catalog, registration)
        self._registered = True

    async def stop(self) -> None:
        """Deregister (best effort), then stop serving; idempotent."""
        if self._registered:
            self._registered = False
            try:
                await deregister_client(self._producer, self._catalog, self._client_id)
            except MulambdaError as exc:  # stopping must go on with the broker gone
                click.echo(f"deregistration of {self._client_id} failed: {exc}", err=True)
        await self._producer.stop()
        await self._server.stop()

    async def wait(self) -> None:
        """Until the server stops."""
        await self._server.wait()


@clients.command(name="serve-probe")
@click.option(
    "--port", type=click.IntRange(0, 65535), required=True, help="Port to listen on (0: any)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--client-id", default=None, help="Id echoed in answers (and registered).")
@click.option(
    "--advertise-host", default=None, help="Host companions should dial [default: --host]."
)
@click.option(
    "--register",
    "register_too",
    is_flag=True,
    help="Register --client-id with this server's URL at start, deregister on stop.",
)
@click.option("--zone", default="local", show_default=True, help="Zone, with --register.")
def serve_probe(
    port: int,
    host: str,
    client_id: str | None,
    advertise_host: str | None,
    register_too: bool,
    zone: str,
) -> None:
    """Answer GET /probe until SIGTERM/SIGINT (prints the probe URL first)."""
    if register_too and not client_id:
        raise BadArguments("--register needs --client-id")
    settings = load_settings()
    configure_logging(settings.log_level)
    catalog = load_catalog(settings.topic_prefix)

    async def factory() -> Service:
        server = ProbeServer(host, port, client_id=client_id, advertise_host=advertise_host)
        if register_too and client_id:
            return _Announcing(RegisteredProbe(server, settings, catalog, client_id, zone), server)
        return _Announcing(server, server)

    sys.exit(run(factory))


class _Announcing:
    """Prints the probe URL on stdout once the wrapped service started."""

    def __init__(self, service: Service, server: ProbeServer) -> None:
        self._service = service
        self._server = server

    async def start(self) -> None:
        await self._service.start()
        click.echo(self._server.url)
        sys.stdout.flush()

    async def stop(self) -> None:
        await self._service.stop()

    async def wait(self) -> None:
        await self._service.wait()
