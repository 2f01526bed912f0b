"""``mulambda executors``: register, deregister and list executors on the compacted topic.

The trait options and :func:`build_registration` are shared with ``mulambda companion``.
Every argument is validated (by the pydantic model) before any Kafka traffic: a missing
trait or a malformed endpoint is a one-line error and exit 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import click
from pydantic import TypeAdapter, ValidationError

from mulambda.cli.common import load_settings, run_async
from mulambda.errors import ConfigurationError, LaunchError
from mulambda.executors.registration import deregister_executor, read_executors, register_executor
from mulambda.kafka import KafkaConfig, Producer
from mulambda.launching.desired import check_launch, replica_id
from mulambda.protocols.tfserving import model_path
from mulambda.wire.catalog import Topic, load_catalog
from mulambda.wire.events import ExecutorProtocol, ExecutorRegistration, LaunchSpec, Traits
from mulambda.wire.signatures import executor_key

F = TypeVar("F", bound=Callable[..., Any])

_OPTION_OF_FIELD = {
    "executor_id": "--executor-id",
    "model_name": "--model-name",
    "model_version": "--model-version",
    "accuracy": "--accuracy",
    "endpoint": "--endpoint",
    "model_data_delay_ms_per_element": "--model-data-delay-ms-per-element",
    "node": "--node",
    "zone": "--zone",
    "heartbeat_interval_s": "--heartbeat-interval",
    "model_type": "--model-type",
    "input_format": "--input-format",
    "output_format": "--output-format",
    "client_id": "--client-id",
    "probe_url": "--probe-url",
}
"""Model field → the option that sets it, for error messages."""


class BadArguments(click.ClickException):
    """Arguments that cannot make a valid message: one line on stderr, exit 2."""

    exit_code = 2


def describe_invalid(exc: ValidationError) -> str:
    """One line naming each bad option and what is wrong with it."""
    parts = []
    for error in exc.errors(include_url=False):
        fields = [str(p) for p in error["loc"] if str(p) in _OPTION_OF_FIELD]
        option = _OPTION_OF_FIELD[fields[-1]] if fields else ".".join(map(str, error["loc"]))
        if error["type"] == "string_pattern_mismatch":
            if fields and fields[-1] in ("endpoint", "probe_url"):
                message = "must be an http(s)://host[:port][/path] URL"
            else:
                message = "may hold only letters, digits and ._:@/- (no spaces)"
            message += f", not {error.get('input')!r}"
        else:
            message = str(error["msg"])
        parts.append(f"{option}: {message}")
    return "; ".join(parts)


_ENDPOINT = TypeAdapter(Annotated[str, *ExecutorRegistration.model_fields["endpoint"].metadata])


def check_endpoint(option: str, url: str) -> str:
    """``url`` if it is a valid executor endpoint; BadArguments naming ``option`` otherwise."""
    try:
        return _ENDPOINT.validate_python(url)
    except ValidationError:
        raise BadArguments(
            f"{option}: must be an http(s)://host[:port][/path] URL, not {url!r}"
        ) from None


def registration_options() -> Callable[[F], F]:
    """The options describing an executor (id, model, traits, accuracy, endpoint...)."""

    def decorate(func: F) -> F:
        options = [
            click.option("--executor-id", required=True, help="Unique id of the executor."),
            click.option(
                "--endpoint",
                required=True,
                help="REST base URL of the executor, e.g. http://10.0.0.5:8501.",
            ),
            click.option(
                "--protocol",
                type=click.Choice([p.value for p in ExecutorProtocol]),
                default=ExecutorProtocol.TFSERVING_REST.value,
                show_default=True,
                help="Inference API the endpoint speaks: TF Serving REST, or Open Inference "
                "Protocol v2 (MLServer, Triton).",
            ),
            click.option("--model-name", help="Name TF Serving serves the model under."),
            click.option(
                "--model-version",
                type=click.IntRange(min=0),
                default=None,
                help="Pinned version (default: TF Serving's highest).",
            ),
            click.option("--model-type", help="Trait: what the model does."),
            click.option("--input-format", help="Trait: shape/encoding of inputs."),
            click.option("--output-format", help="Trait: shape/encoding of outputs."),
            click.option("--accuracy", type=float, help="Accuracy vouched for, in [0, 1]."),
            click.option(
                "--model-data-delay-ms-per-element",
                type=float,
                default=0.0,
                show_default=True,
                help="Extra milliseconds per input element.",
            ),
            click.option("--node", default="local", show_default=True, help="Node it runs on."),
            click.option("--zone", default="local", show_default=True, help="Zone/region."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def build_registration(
    *,
    executor_id: str,
    endpoint: str,
    model_name: str | None,
    model_version: int | None,
    model_type: str | None,
    input_format: str | None,
    output_format: str | None,
    accuracy: float | None,
    model_data_delay_ms_per_element: float,
    node: str,
    zone: str,
    heartbeat_interval_s: float = 5.0,
    protocol: str = ExecutorProtocol.TFSERVING_REST.value,
) -> ExecutorRegistration:
    """A validated registration from the options; BadArguments (exit 2) otherwise."""
    given = {
        "--model-name": model_name,
        "--model-type": model_type,
        "--input-format": input_format,
        "--output-format": output_format,
        "--accuracy": accuracy,
    }
    if (
        model_name is None
        or model_type is None
        or input_format is None
        or output_format is None
        or accuracy is None
    ):
        missing = [option for option, value in given.items() if value is None]
        raise BadArguments("missing " + ", ".join(missing))
    try:
        # Identifiers may hold '/' and ':', which TF Serving's URLs cannot carry.
        model_path(model_name, version=model_version)
    except ConfigurationError as exc:
        raise BadArguments(f"--model-name: {exc.reason}") from None
    try:
        return ExecutorRegistration(
            executor_id=executor_id,
            model_name=model_name,
            model_version=model_version,
            traits=Traits(
                model_type=model_type, input_format=input_format, output_format=output_format
            ),
            accuracy=accuracy,
            endpoint=endpoint,
            protocol=ExecutorProtocol(protocol),
            model_data_delay_ms_per_element=model_data_delay_ms_per_element,
            node=node,
            zone=zone,
            heartbeat_interval_s=heartbeat_interval_s,
        )
    except ValidationError as exc:
        raise BadArguments(describe_invalid(exc)) from exc


def publish_registration(registration: ExecutorRegistration) -> None:
    """Publish ``registration`` on the settings' topic and wait for the broker's ack."""
    settings = load_settings()
    catalog = load_catalog(settings.topic_prefix)

    async def go() -> None:
        async with Producer(KafkaConfig.from_settings(settings, "mulambda-cli")) as producer:
            await register_executor(
                producer,
                catalog,
                registration,
                signing_key=settings.signing_key(registration.executor_id),
            )

    run_async(go())


def describe_executor(reg: ExecutorRegistration) -> str:
    """One tab-separated line: id, model, version, traits, accuracy, endpoint (for a launch
    request, ``launch xN``: it has no endpoint of its own)."""
    version = "-" if reg.model_version is None else str(reg.model_version)
    traits = "/".join(reg.traits.key())
    where = reg.endpoint if reg.launch is None else f"launch x{reg.launch.replicas}"
    return "\t".join([reg.executor_id, reg.model_name, version, traits, f"{reg.accuracy:g}", where])


@click.group()
def executors() -> None:
    """Executors on the compacted executor-registrations topic."""


@executors.command()
@registration_options()
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=5.0,
    show_default=True,
    help="Seconds between the companion's heartbeats.",
)
def register(heartbeat_interval: float, **options: Any) -> None:
    """Publish an executor's registration and wait for the broker's ack.

    Its companion then runs with --confirm-existing and heartbeats for it.
    """
    registration = build_registration(heartbeat_interval_s=heartbeat_interval, **options)
    publish_registration(registration)
    click.echo(f"registered {registration.executor_id}")


@executors.command()
@click.argument("executor_id")
def deregister(executor_id: str) -> None:
    """Publish a tombstone for EXECUTOR_ID (selectors forget it; compaction drops it)."""
    if not executor_id.strip():
        raise BadArguments("EXECUTOR_ID must not be empty")
    settings = load_settings()
    catalog = load_catalog(settings.topic_prefix)
    config = KafkaConfig.from_settings(settings, "mulambda-cli")

    async def go() -> bool:
        known = executor_id in await read_executors(config, catalog)
        async with Producer(config) as producer:
            await deregister_executor(
                producer, catalog, executor_id, signing_key=settings.signing_key(executor_id)
            )
        return known

    if not run_async(go()):
        click.echo(f"note: {executor_id} was not registered; tombstone written anyway", err=True)
    click.echo(f"deregistered {executor_id}")


@executors.command()
@click.argument("executor_id")
def key(executor_id: str) -> None:
    """Print EXECUTOR_ID's signing key (hex), derived from MULAMBDA_REGISTRATION_SECRET.

    Give it to that executor's companion only (MULAMBDA_REGISTRATION_KEY or _FILE, e.g.
    from a Kubernetes Secret): it signs that id's registrations and no other's.
    """
    settings = load_settings()
    if settings.registration_secret is None:
        raise BadArguments("MULAMBDA_REGISTRATION_SECRET (or _FILE) is not set")
    secret = settings.registration_secret.get_secret_value().encode()
    click.echo(executor_key(secret, executor_id).hex())


@executors.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of registrations.")
def list_(as_json: bool) -> None:
    """One line per live executor: id, model, version, traits, accuracy, endpoint."""
    settings = load_settings()
    catalog = load_catalog(settings.topic_prefix)
    found = run_async(read_executors(KafkaConfig.from_settings(settings, "mulambda-cli"), catalog))
    ordered = [found[k] for k in sorted(found)]
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in ordered], indent=2))
        return
    for reg in ordered:
        click.echo(describe_executor(reg))
    if not ordered:
        click.echo(f"no executors on {catalog.name(Topic.EXECUTOR_REGISTRATIONS)}", err=True)


@executors.command()
@click.option("--executor-id", required=True, help="Unique id of the executor.")
@click.option("--model-name", help="Model in MinIO (models/NAME/) and in TF Serving URLs.")
@click.option(
    "--model-version",
    type=click.IntRange(min=1),
    default=None,
    help="Version in MinIO (default: the latest).",
)
@click.option("--model-type", help="Trait: what the model does.")
@click.option("--input-format", help="Trait: shape/encoding of inputs.")
@click.option("--output-format", help="Trait: shape/encoding of outputs.")
@click.option("--accuracy", type=float, help="Accuracy vouched for, in [0, 1].")
@click.option("--model-data-delay-ms-per-element", type=float, default=0.0, show_default=True)
@click.option("--zone", default="local", show_default=True)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=5.0,
    show_default=True,
)
@click.option("--namespace", default="mulambda", show_default=True)
@click.option("--serving-image", default="tensorflow/serving:2.18.0", show_default=True)
@click.option(
    "--mulambda-image",
    default=None,
    help="Image of the model fetcher and companion [default: ghcr.io/mulambda/mulambda:0.1.0,"
    " or with --publish the launcher's MULAMBDA_LAUNCHER_MULAMBDA_IMAGE].",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Pods serving the model. Above 1: a StatefulSet whose pods register as"
    " EXECUTOR_ID-0, EXECUTOR_ID-1, ... (one executor each).",
)
@click.option("--cpu", default=None, help="CPU request of the serving container.")
@click.option("--memory", default=None, help="Memory request of the serving container.")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--dry-run", is_flag=True, help="Print the manifest as YAML; apply nothing.")
@click.option(
    "--publish",
    is_flag=True,
    help="Publish a launch request on Kafka instead, for `mulambda launcher` to run (on"
    " Kubernetes or as local processes); its replicas register as EXECUTOR_ID-0, -1, ...;"
    " `executors deregister EXECUTOR_ID` withdraws it.",
)
def launch(
    namespace: str,
    serving_image: str,
    mulambda_image: str | None,
    replicas: int,
    cpu: str | None,
    memory: str | None,
    kubeconfig: str | None,
    dry_run: bool,
    publish: bool,
    heartbeat_interval: float,
    **options: Any,
) -> None:
    """Run an executor on Kubernetes: TF Serving fed from MinIO, plus its companion.

    Several replicas register one executor id each (EXECUTOR_ID-<ordinal>). With
    --publish, the launcher runs it instead (see mulambda.launching).
    """
    if publish:
        _publish_launch(
            LaunchSpec(
                replicas=replicas,
                image=serving_image,
                mulambda_image=mulambda_image,
                cpu=cpu,
                memory=memory,
            ),
            heartbeat_interval,
            options,
        )
        return
    import yaml

    from mulambda.launching.manifests import (
        LaunchOptions,
        apply_deployment,
        executor_deployment,
        replica_executor_ids,
    )

    # The endpoint is the pod's own IP, known only at run time; the companion fills it in.
    # Replica ids get a "-<ordinal>" suffix; check the longest one is still a valid id.
    replica_ids = replica_executor_ids(options["executor_id"], replicas)
    build_registration(
        endpoint="http://pod:8501",
        node="k8s",
        heartbeat_interval_s=heartbeat_interval,
        **{**options, "executor_id": replica_ids[-1]},
    )
    registration = build_registration(
        endpoint="http://pod:8501", node="k8s", heartbeat_interval_s=heartbeat_interval, **options
    )
    manifest = executor_deployment(
        registration,
        LaunchOptions(
            namespace=namespace,
            serving_image=serving_image,
            mulambda_image=mulambda_image or LaunchOptions().mulambda_image,
            replicas=replicas,
            cpu=cpu,
            memory=memory,
        ),
    )
    if dry_run:

        class _Plain(yaml.SafeDumper):
            # The manifest shares label and envFrom objects; spell them out, no &anchors.
            def ignore_aliases(self, data: Any) -> bool:
                return True

        click.echo(yaml.dump(manifest, Dumper=_Plain, sort_keys=False), nl=False)
        return
    action = run_async(apply_deployment(manifest, kubeconfig=kubeconfig))
    kind = str(manifest["kind"]).lower()
    click.echo(f"{action} {kind} {namespace}/{manifest['metadata']['name']}")
    if replicas > 1:
        click.echo(f"replicas register as {replica_ids[0]} ... {replica_ids[-1]}")


def _publish_launch(spec: LaunchSpec, heartbeat_interval: float, options: dict[str, Any]) -> None:
    """Publish a launch request (a registration with ``spec``) and wait for the ack."""
    registration = build_registration(
        # A launch request is never dialled; its replicas register their own endpoints.
        endpoint="http://launch.invalid",
        node="launcher",
        heartbeat_interval_s=heartbeat_interval,
        **options,
    ).model_copy(update={"launch": spec})
    try:
        check_launch(registration)
    except LaunchError as exc:
        raise BadArguments(exc.reason) from None
    publish_registration(registration)
    first, last = (
        replica_id(registration.executor_id, 0),
        replica_id(registration.executor_id, spec.replicas - 1),
    )
    click.echo(f"published launch request {registration.executor_id}")
    click.echo(f"replicas register as {first}" + (f" ... {last}" if spec.replicas > 1 else ""))
