"""Kafka plumbing every worker shares; the only package that imports aiokafka.

config      KafkaConfig, start_bounded, start_consumer (the one consumer factory)
producer    Producer, await_delivery
records     Record, RawRecord, RecordProcessor, DeadLetterer, answer_invalid_requests
fetching    fetch / fetch_retrying (the one getmany), commits, positioning, lag
commits     CommitTracker: which offsets a pipelined consumer may commit (pure)
consumer    ConsumerLoop: in order, a batch at a time
pipelined   PipelinedConsumer: many records in flight across fetches
replay      replay, read_until_key, KeyWaiter
admin       Admin, TopicChange, partitions_of
reply       request/reply addressing: reply headers, partition_for, send_reply

aiokafka errors are translated to :mod:`mulambda.errors` (KafkaUnavailable) inside
these modules; workers use the re-exported TopicPartition and RawRecord types.
"""

from __future__ import annotations

from mulambda.kafka.admin import Admin, TopicChange, partitions_of
from mulambda.kafka.commits import CommitTracker, Taken
from mulambda.kafka.config import (
    KafkaConfig,
    KafkaConsumer,
    Membership,
    close_consumer,
    start_bounded,
    start_consumer,
)
from mulambda.kafka.consumer import ConsumerLoop
from mulambda.kafka.fetching import (
    Batches,
    assign_at_end,
    commit_offsets,
    commit_unset_positions,
    end_offsets,
    fetch,
    fetch_retrying,
    lag_of,
)
from mulambda.kafka.health import LinkHealth, consumer_problem, producer_problem
from mulambda.kafka.pipelined import PipelinedConsumer
from mulambda.kafka.producer import (
    AnswerSink,
    PlainProducer,
    Producer,
    await_delivery,
    default_partition,
    plain_producer,
)
from mulambda.kafka.records import (
    ConsumerStats,
    DeadLetterer,
    ErrorReply,
    Handler,
    InvalidHandler,
    Outcome,
    RawRecord,
    Record,
    RecordProcessor,
    TopicPartition,
    answer_invalid_requests,
)
from mulambda.kafka.replay import KeyWaiter, read_until_key, replay
from mulambda.kafka.transactions import TransactionalProducer

__all__ = [
    "Admin",
    "AnswerSink",
    "Batches",
    "CommitTracker",
    "ConsumerLoop",
    "ConsumerStats",
    "DeadLetterer",
    "ErrorReply",
    "Handler",
    "InvalidHandler",
    "KafkaConfig",
    "KafkaConsumer",
    "KeyWaiter",
    "LinkHealth",
    "Membership",
    "Outcome",
    "PipelinedConsumer",
    "PlainProducer",
    "Producer",
    "RawRecord",
    "Record",
    "RecordProcessor",
    "Taken",
    "TopicChange",
    "TopicPartition",
    "TransactionalProducer",
    "answer_invalid_requests",
    "assign_at_end",
    "await_delivery",
    "close_consumer",
    "commit_offsets",
    "commit_unset_positions",
    "consumer_problem",
    "default_partition",
    "end_offsets",
    "fetch",
    "fetch_retrying",
    "lag_of",
    "partitions_of",
    "plain_producer",
    "producer_problem",
    "read_until_key",
    "replay",
    "start_bounded",
    "start_consumer",
]
