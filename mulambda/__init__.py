"""MuLambda: trait-based model selection and asynchronous inference routing over Kafka."""

__version__ = "0.1.0"
