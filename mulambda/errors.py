"""Every error MuLambda raises on purpose.

The hierarchy::

    MulambdaError                     (retriable: bool)
    ├── ConfigurationError            bad settings or arguments; never retriable
    ├── DecodeError                   bytes that are not a valid message; dead-lettered
    │   └── OversizeError             a record larger than the configured bound
    ├── AccessDenied                  credentials or permissions refused; never retriable
    │   ├── AuthenticationError       the server rejected who we are (bad password,
    │   │                             unknown user, untrusted certificate)
    │   └── AuthorizationError        the principal may not do this (a Kafka ACL, a
    │                                 Redis ACL rule): fix the ACLs, not the request
    ├── UntrustedRecord               a valid registration that fails its signature or
    │                                 the endpoint allow-list; dead-lettered, not applied
    ├── TransportError                Kafka, Redis, S3 or HTTP failed underneath us
    │   ├── KafkaUnavailable          broker unreachable or timed out (retriable)
    │   ├── StoreUnavailable          Redis/DragonflyDB unreachable (retriable)
    │   └── ObjectStoreError          MinIO/S3 refused or failed
    ├── RequestTimeout                no reply/response before the deadline (retriable)
    ├── UndeliverableAnswer           an answer that cannot be delivered (reply topic not
    │                                 allowed or missing, publish failed): the request is
    │                                 dead-lettered with the reason, never re-handled
    ├── StaleGeneration               a transactional offset commit the consumer group
    │                                 refused: the member's generation is over (a zombie),
    │                                 its partitions are another's; never retried
    ├── SelectionError                a selection request that cannot be answered
    │   ├── InvalidSelectionRequest   weights, sizes or policy out of range
    │   └── NoCandidate               nothing passes the hard criteria or SLO
    ├── ExecutorError                 a TF Serving endpoint answered with an error
    │   (subclasses per HTTP status live in ``mulambda.protocols.tfserving``)
    ├── ModelStoreError               model upload/download refused (layout, exists)
    └── LaunchError                   a launch request that cannot be carried out
        └── LaunchForbidden           the cluster's RBAC refused the launcher (403)

Errors from aiokafka, redis and aiohttp are translated at the module that talks to
them, so callers only ever catch ``MulambdaError``. ``retriable`` tells a worker
whether to try again (possibly elsewhere) or to dead-letter / reply with an error.
"""

from __future__ import annotations


class MulambdaError(Exception):
    """Base of every MuLambda error; ``retriable`` drives retry versus dead-letter."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable

    @property
    def reason(self) -> str:
        """A one-line reason fit for a dead letter, an error reply or a CLI message."""
        text = str(self).strip().splitlines()
        return text[0] if text else type(self).__name__


class ConfigurationError(MulambdaError):
    """Settings or arguments that cannot work; fix the configuration."""


class DecodeError(MulambdaError):
    """Bytes that do not decode into the expected message (not JSON, or invalid)."""


class OversizeError(DecodeError):
    """A record body above the configured size bound."""


class AccessDenied(MulambdaError):
    """A server refused our credentials or this operation; retrying cannot help."""


class AuthenticationError(AccessDenied):
    """The server rejected who we are: bad password, unknown user, untrusted certificate."""


class AuthorizationError(AccessDenied):
    """The principal is not allowed this operation (topic, group, transactional id)."""


class UntrustedRecord(MulambdaError):
    """A registration (or tombstone) whose signature is missing, wrong or replayed, or
    whose endpoint is outside the allow-list: never applied, dead-lettered."""


class TransportError(MulambdaError):
    """An underlying client (Kafka, Redis, S3, HTTP) failed."""

    retriable = True


class KafkaUnavailable(TransportError):
    """The Kafka cluster could not be reached in time."""


class StoreUnavailable(TransportError):
    """The metadata store (Redis/DragonflyDB) could not be reached."""


class ObjectStoreError(TransportError):
    """The object store (MinIO/S3) refused or failed a request."""


class RequestTimeout(MulambdaError):
    """No reply or response arrived before the deadline."""

    retriable = True


class UndeliverableAnswer(MulambdaError):
    """An answer (a result, a reply) that cannot be delivered: its reply topic is not
    allowed or does not exist, or publishing failed after its retries."""


class StaleGeneration(MulambdaError):
    """The consumer group refused offsets committed as a generation that is over
    (KIP-447: ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID), or the member
    has no generation at all: its partitions belong to another member now, which redoes
    what this one held for them. The transaction is aborted; never retriable."""


class SelectionError(MulambdaError):
    """A selection request that cannot be answered with a candidate."""


class InvalidSelectionRequest(SelectionError):
    """A selection request whose fields are out of range or unknown."""


class NoCandidate(SelectionError):
    """No executor satisfies the request; ``criterion`` names the last filter."""

    def __init__(self, message: str, *, criterion: str) -> None:
        super().__init__(message)
        self.criterion = criterion


class ExecutorError(MulambdaError):
    """A model executor (TF Serving API) answered with an error."""

    def __init__(
        self, message: str, *, status: int | None = None, retriable: bool | None = None
    ) -> None:
        super().__init__(message, retriable=retriable)
        self.status = status


class ModelStoreError(MulambdaError):
    """A model upload, listing or download that cannot be done as asked."""


class LaunchError(MulambdaError):
    """A launch request the launcher cannot carry out: an invalid spec, or an object of
    the same name it does not own; never retriable (the status event says why).
    ``status`` is the cluster's HTTP status, when it answered one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LaunchForbidden(LaunchError):
    """The cluster refused the launcher a request (HTTP 403: its Role does not allow it)."""
