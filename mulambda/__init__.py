"""MuLambda: trait-based model selection and asynchronous inference routing over Kafka.

The producer SDK: :class:`Client` (asyncio) and :class:`SyncClient` (blocking) publish
inference requests and return their results or raise the errors below.
"""

from mulambda.errors import (
    ConfigurationError,
    KafkaUnavailable,
    MulambdaError,
    RequestTimeout,
)
from mulambda.routing.client import Client, ClientClosed
from mulambda.routing.results import InferenceFailed
from mulambda.routing.sync_client import SyncClient
from mulambda.wire.events import InferenceResult, InferenceStatus, Slo, SoftWeights, Traits

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClientClosed",
    "ConfigurationError",
    "InferenceFailed",
    "InferenceResult",
    "InferenceStatus",
    "KafkaUnavailable",
    "MulambdaError",
    "RequestTimeout",
    "Slo",
    "SoftWeights",
    "SyncClient",
    "Traits",
    "__version__",
]
