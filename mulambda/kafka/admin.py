"""Topic administration and cluster metadata through aiokafka's admin client.

:class:`Admin` applies the topic catalog and answers what topics exist with how many
partitions, and which broker leads each partition; :func:`partitions_of` is the one-shot
form for readers about to assign. :meth:`Admin.group_assignment` tells which member of a
consumer group owns what.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.coordinator.protocol import ConsumerProtocol
from aiokafka.errors import KafkaError, for_code

from mulambda.errors import ConfigurationError, KafkaUnavailable, MulambdaError
from mulambda.kafka.config import KafkaConfig, access_error, kafka_error, start_bounded
from mulambda.kafka.records import TopicPartition
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.catalog import Catalog


def _is_override(source: bool | int) -> bool:
    # DescribeConfigs v0 says "is_default" (a bool); v1+ give config_source, where
    # 1 is DYNAMIC_TOPIC_CONFIG: a value set on the topic rather than inherited.
    return (not source) if isinstance(source, bool) else source == 1


def partition_leaders(
    meta: Iterable[Mapping[str, Any]], topics: Collection[str]
) -> dict[TopicPartition, int]:
    """The leader's node id of every partition of ``topics`` in ``meta`` (describe_topics
    entries); partitions without a leader (-1, mid-election) and topics in error are left
    out."""
    return {
        TopicPartition(t["topic"], p["partition"]): p["leader"]
        for t in meta
        if t["topic"] in topics and t["error_code"] == 0
        for p in t["partitions"]
        if p["leader"] >= 0
    }


def busiest(leaders: Mapping[TopicPartition, int]) -> int | None:
    """The node leading the most of ``leaders``' partitions (the lowest id of a tie)."""
    counts = Counter(leaders.values())
    if not counts:
        return None
    return min(counts, key=lambda node: (-counts[node], node))


@dataclass(frozen=True, slots=True)
class TopicChange:
    """What ``apply_topics`` did to one topic."""

    name: str
    action: str  # "created", "updated", "unchanged"
    detail: str = ""


class Admin(Lifecycle):
    """Topic administration through aiokafka's admin client, bounded in time."""

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._admin: AIOKafkaAdminClient | None = None

    async def start(self) -> None:
        """Connect; KafkaUnavailable within the config's timeout."""
        if self._admin is not None:
            return
        admin = AIOKafkaAdminClient(**self._config.client_kwargs())
        await start_bounded(admin, "admin", self._config.request_timeout_s)
        self._admin = admin

    async def stop(self) -> None:
        """Close; safe to call twice."""
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()

    def _require(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise MulambdaError("admin client is not started")
        return self._admin

    async def partition_counts(self) -> dict[str, int]:
        """Partition count of every topic the cluster serves, in one metadata round trip.

        Internal topics and topics the broker reports an error for (one being created,
        say) are left out: nothing can be produced to them yet.
        """
        admin = self._require()
        try:
            async with asyncio.timeout(self._config.request_timeout_s):
                # All topics: naming one would let a broker with auto-creation create it.
                meta = await admin.describe_topics()
        except (TimeoutError, KafkaError) as exc:
            raise KafkaUnavailable(f"cluster metadata unavailable: {exc!r}") from exc
        return {
            t["topic"]: len(t["partitions"])
            for t in meta
            if t["error_code"] == 0 and not t.get("is_internal", False)
        }

    async def leaders(self, topics: Collection[str]) -> dict[TopicPartition, int]:
        """The node id leading each partition of ``topics`` now (one metadata round trip)."""
        admin = self._require()
        try:
            async with asyncio.timeout(self._config.request_timeout_s):
                meta = await admin.describe_topics(sorted(topics))
        except (TimeoutError, KafkaError) as exc:
            raise KafkaUnavailable(f"cluster metadata unavailable: {exc!r}") from exc
        return partition_leaders(meta, topics)

    async def busiest_leader(self, topics: Collection[str]) -> int:
        """The broker leading the most partitions of ``topics``; KafkaUnavailable when no
        partition has a leader."""
        node = busiest(await self.leaders(topics))
        if node is None:
            raise KafkaUnavailable(f"no partition of {len(topics)} topic(s) has a leader")
        return node

    async def committed(self, group_id: str) -> dict[TopicPartition, int]:
        """The offsets ``group_id`` has committed, by partition (none yet: left out)."""
        admin = self._require()
        try:
            async with asyncio.timeout(self._config.request_timeout_s):
                offsets = await admin.list_consumer_group_offsets(group_id)
        except (TimeoutError, KafkaError) as exc:
            raise KafkaUnavailable(f"offsets of group {group_id} unavailable: {exc!r}") from exc
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def group_assignment(self, group_id: str) -> dict[str, set[TopicPartition]] | None:
        """The partitions each member of ``group_id`` owns, by the member's client id;
        None while the group is not stable (rebalancing, or empty)."""
        admin = self._require()
        try:
            async with asyncio.timeout(self._config.request_timeout_s):
                responses = await admin.describe_consumer_groups([group_id])
        except (TimeoutError, KafkaError) as exc:
            raise kafka_error(exc, f"group {group_id} not described") from exc
        for response in responses:
            for group in response.groups:
                error_code, name, state, members = group[0], group[1], group[2], group[5]
                if name != group_id:
                    continue
                if error_code != 0 or state != "Stable":
                    return None
                owned: dict[str, set[TopicPartition]] = {}
                for member in members:
                    client_id, assignment = member[1], member[4]
                    parts = owned.setdefault(client_id, set())
                    if assignment:  # empty until the member got its assignment
                        parts.update(ConsumerProtocol.ASSIGNMENT.decode(assignment).partitions())
                return owned
        return None

    async def partitions(self, *topics: str) -> list[TopicPartition]:
        """Every partition of ``topics``, in order; ConfigurationError when one does not exist."""
        counts = await self.partition_counts()
        for topic in topics:
            if not counts.get(topic):
                raise ConfigurationError(
                    f"topic {topic} does not exist; run `mulambda topics apply`"
                )
        return [TopicPartition(topic, p) for topic in topics for p in range(counts[topic])]

    async def describe(self, names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Existing topics (all, or ``names``) → partitions and configs."""
        admin = self._require()
        try:
            async with asyncio.timeout(self._config.request_timeout_s):
                existing = set(await admin.list_topics())
                wanted = sorted(existing if names is None else existing & set(names))
                if not wanted:
                    return {}
                meta = await admin.describe_topics(wanted)
                resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in wanted]
                described = await admin.describe_configs(resources)
        except (TimeoutError, KafkaError) as exc:
            raise kafka_error(exc, "describe topics failed") from exc
        out: dict[str, dict[str, Any]] = {
            t["topic"]: {"partitions": len(t["partitions"]), "config": {}, "overrides": {}}
            for t in meta
        }
        for response in described:
            for resource in response.resources:
                name, entries = resource[3], resource[4]
                if name in out:
                    out[name]["config"] = {e[0]: e[1] for e in entries}
                    out[name]["overrides"] = {e[0]: e[1] for e in entries if _is_override(e[3])}
        return out

    async def apply(self, catalog: Catalog, *, replication: int | None = None) -> list[TopicChange]:
        """Create missing topics, raise partition counts and set configs to the catalog's.

        Idempotent: a second run reports every topic unchanged. Partition counts are never
        lowered (Kafka cannot); a catalog asking for fewer is reported, not applied.
        """
        admin = self._require()
        specs = list(catalog.specs.values())
        names = {s.full_name(catalog.prefix): s for s in specs}
        current = await self.describe(list(names))
        changes: list[TopicChange] = []
        try:
            async with asyncio.timeout(self._config.request_timeout_s * 3):
                missing = [n for n in names if n not in current]
                if missing:
                    response = await admin.create_topics(
                        [
                            NewTopic(
                                name=n,
                                num_partitions=names[n].partitions,
                                replication_factor=replication or names[n].replication,
                                topic_configs=dict(names[n].config),
                            )
                            for n in missing
                        ]
                    )
                    for err in response.topic_errors:
                        name, code = err[0], err[1]
                        if code not in (0, 36):  # 36: already exists (a concurrent apply)
                            error = for_code(code)(name)
                            raise access_error(error, f"create {name} failed") or (
                                ConfigurationError(f"create {name} failed: error code {code}")
                            )
                    await self._wait_visible(missing)
                    changes += [TopicChange(n, "created") for n in missing]
                for name, spec in names.items():
                    if name in missing:
                        continue
                    have = current[name]
                    notes = []
                    if have["partitions"] < spec.partitions:
                        await admin.create_partitions({name: NewPartitions(spec.partitions)})
                        notes.append(f"partitions {have['partitions']}→{spec.partitions}")
                    elif have["partitions"] > spec.partitions:
                        notes.append(f"has {have['partitions']} partitions (catalog: fewer)")
                    drift = {k: v for k, v in spec.config.items() if have["config"].get(k) != v}
                    if drift:
                        await admin.alter_configs(
                            [ConfigResource(ConfigResourceType.TOPIC, name, dict(spec.config))]
                        )
                        notes.append("config " + ", ".join(f"{k}={v}" for k, v in drift.items()))
                    action = (
                        "updated"
                        if any("→" in n or "config" in n for n in notes)
                        else ("unchanged")
                    )
                    changes.append(TopicChange(name, action, "; ".join(notes)))
        except (TimeoutError, KafkaError) as exc:
            raise kafka_error(exc, "apply topics failed") from exc
        return changes

    async def _wait_visible(self, names: Sequence[str]) -> None:
        # Created topics reach every broker's metadata cache a little later; callers
        # that produce right after `apply` must not see UnknownTopicOrPartition.
        admin = self._require()
        while not set(names) <= set(await admin.list_topics()):  # noqa: ASYNC110 - polling the broker
            await asyncio.sleep(0.05)

    async def delete(self, names: Sequence[str]) -> None:
        """Delete topics (tests clean up their prefixed topics with this)."""
        if not names:
            return
        try:
            async with asyncio.timeout(self._config.request_timeout_s):
                await self._require().delete_topics(list(names))
        except (TimeoutError, KafkaError) as exc:
            raise kafka_error(exc, "delete topics failed") from exc


async def partitions_of(config: KafkaConfig, *topics: str) -> list[TopicPartition]:
    """Every partition of ``topics``, in order; ConfigurationError when one does not exist.

    Opens a short-lived admin client; a component asking repeatedly holds an
    :class:`Admin` and calls :meth:`Admin.partitions`.
    """
    async with Admin(config) as admin:
        return await admin.partitions(*topics)
