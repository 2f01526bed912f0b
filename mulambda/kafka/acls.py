"""Creating the ACLs of :mod:`mulambda.security` on a cluster (CreateAcls, API key 30).

aiokafka's admin client has no ACL calls, but ships the protocol's CreateAcls request;
it is sent through the admin client's connection to one broker (KRaft forwards it to
the controller). Creating an ACL that exists is a no-op, so applying is idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.admin import CreateAclsRequest_v1

from mulambda.errors import MulambdaError
from mulambda.kafka.config import KafkaConfig, kafka_error, start_bounded
from mulambda.security.acls import AclRule

# Codes of the Kafka protocol's enums (org.apache.kafka.common.{resource,acl}).
RESOURCE_TYPES: Final = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
PATTERN_TYPES: Final = {"literal": 3, "prefixed": 4}
OPERATIONS: Final = {
    "All": 2,
    "Read": 3,
    "Write": 4,
    "Create": 5,
    "Delete": 6,
    "Alter": 7,
    "Describe": 8,
    "ClusterAction": 9,
    "DescribeConfigs": 10,
    "AlterConfigs": 11,
    "IdempotentWrite": 12,
}
ALLOW: Final = 3
ANY_HOST: Final = "*"


def acl_creations(
    principal: str, rules: Sequence[AclRule]
) -> list[tuple[int, str, int, str, str, int, int]]:
    """The CreateAcls v1 entries allowing ``principal`` every operation of ``rules``."""
    out = []
    for rule in rules:
        for op in rule.operations:
            if op not in OPERATIONS:
                raise MulambdaError(f"unknown Kafka ACL operation {op!r}")
            out.append(
                (
                    RESOURCE_TYPES[rule.resource_type],
                    rule.name,
                    PATTERN_TYPES[rule.pattern],
                    principal,
                    ANY_HOST,
                    OPERATIONS[op],
                    ALLOW,
                )
            )
    return out


async def apply_acls(
    config: KafkaConfig, wanted: Mapping[str, Sequence[AclRule]]
) -> dict[str, int]:
    """Create the ACLs of each principal (``User:name`` → rules); the number of ACL
    entries per principal. AuthorizationError when this user may not alter ACLs."""
    admin = AIOKafkaAdminClient(**config.client_kwargs())
    await start_bounded(admin, "acls", config.request_timeout_s)
    try:
        created: dict[str, int] = {}
        for principal, rules in wanted.items():
            creations = acl_creations(principal, rules)
            # aiokafka has no public ACL call; its request goes to any broker.
            node = admin._client.get_random_node()
            response = await admin._send_request_to_node(node, CreateAclsRequest_v1(creations))
            for code, message in response.creation_responses:
                if code:
                    raise kafka_error(for_code(code)(message), f"creating ACLs of {principal}")
            created[principal] = len(creations)
        return created
    except KafkaError as exc:
        raise kafka_error(exc, "creating ACLs") from exc
    finally:
        await admin.close()
