"""``mulambda acls``: the Kafka ACLs of each role (mulambda.security), shown or applied."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from mulambda.cli.common import load_settings, run_async
from mulambda.kafka import KafkaConfig
from mulambda.kafka.acls import apply_acls
from mulambda.security import ROLES, role_acls
from mulambda.wire.catalog import load_catalog

PRINCIPAL_FORMAT = "User:{role}"
"""Principal of each role's Kafka user (the local broker names its users after roles)."""

role_option = click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ROLES),
    help="Only this role (repeatable; default: every role).",
)
principal_option = click.option(
    "--principal-format",
    default=PRINCIPAL_FORMAT,
    show_default=True,
    help="The principal of a role's user; {role} is replaced by the role name.",
)


@click.group()
def acls() -> None:
    """Kafka ACLs per role, from the access table of the topic catalog."""


@acls.command(name="roles")
def roles_() -> None:
    """Print the role names, one a line."""
    for role in ROLES:
        click.echo(role)


@acls.command()
@role_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per role.")
def show(roles: tuple[str, ...], as_json: bool) -> None:
    """Print each role's ACLs for MULAMBDA_TOPIC_PREFIX."""
    settings = load_settings()
    catalog = load_catalog(settings.topic_prefix)
    reply_topics = settings.router_reply_topics.split(",")
    for role in roles or ROLES:
        rules = role_acls(
            role, catalog, reply_topics=reply_topics, selector_group=settings.selector_group_id
        )
        if as_json:
            click.echo(json.dumps({"role": role, "acls": [asdict(r) for r in rules]}))
            continue
        for rule in rules:
            click.echo(
                f"{role}\t{rule.resource_type}\t{rule.pattern}\t{rule.name}\t"
                + ",".join(rule.operations)
            )


@acls.command()
@role_option
@principal_option
def apply(roles: tuple[str, ...], principal_format: str) -> None:
    """Create each role's ACLs on the cluster (as a user allowed to; idempotent)."""
    settings = load_settings()
    catalog = load_catalog(settings.topic_prefix)
    reply_topics = settings.router_reply_topics.split(",")
    wanted = {
        principal_format.format(role=role): role_acls(
            role, catalog, reply_topics=reply_topics, selector_group=settings.selector_group_id
        )
        for role in roles or ROLES
    }
    created = run_async(apply_acls(KafkaConfig.from_settings(settings, "mulambda-cli"), wanted))
    for principal, count in created.items():
        click.echo(f"{principal}\t{count} ACL entries")
