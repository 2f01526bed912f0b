"""aiokafka >= 0.13: seek_to_beginning() right after assign() can land at the END.

    .venv/bin/python benchmarks/repro_aiokafka_seek_race.py [BOOTSTRAP]
                                    # no BOOTSTRAP: a private Kafka on free ports
                                    # (mulambda.harness.infra.PrivateInfra)

A consumer with auto_offset_reset="latest" is assigned a partition holding 3 records,
asks end_offsets(), then seek_to_beginning(), and reads. Expected: position 0 and 3
records. Seen on aiokafka 0.13.0 and 0.14.0 in most rounds: position 3, no records.
0.12.0: never. With auto_offset_reset="earliest": never, on any version.

Why: assign() makes the fetcher start a reset to the consumer's default strategy
(ListOffsets "latest"). seek_to_beginning() marks the partition awaiting an "earliest"
reset, but when the in-flight "latest" answer arrives, Fetcher._update_fetch_positions
(aiokafka/consumer/fetcher.py, 0.14.0 lines 993-998) applies it to any partition still
*awaiting a reset*, without checking that it is still the reset it asked for:

        # There could have been some `seek` call while fetching offset
        if tp_state.awaiting_reset:
            tp_state.reset_to(offset)

so the "earliest" reset is never sent and the partition starts at the end. In 0.12 the
assign-time request happened to go out before end_offsets()'s and was answered before
it; since 0.13 (connections negotiate API versions, aio-libs/aiokafka#1136) it goes out
after it, so end_offsets() returns first and seek_to_beginning() falls in the window.
"""

import asyncio
import sys

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

TOPIC, ROUNDS, RECORDS = "repro", 20, 3


async def one_round(bootstrap: str, reset: str) -> tuple[int, int]:
    """(position after seek_to_beginning, records read below the end offset)."""
    tp = TopicPartition(TOPIC, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset=reset
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        position = await consumer.position(tp)
        read = 0
        while await consumer.position(tp) < end:
            batches = await consumer.getmany(tp, timeout_ms=500)
            read += sum(1 for r in batches.get(tp, []) if r.offset < end)
        return position, read
    finally:
        await consumer.stop()


async def run(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    for i in range(RECORDS):
        await producer.send_and_wait(TOPIC, b"record %d" % i, partition=0)
    await producer.stop()
    print(f"aiokafka {aiokafka.__version__}, {RECORDS} records in {TOPIC}[0]")
    for reset in ("latest", "earliest"):
        results = [await one_round(bootstrap, reset) for _ in range(ROUNDS)]
        short = sum(1 for _, read in results if read < RECORDS)
        positions = sorted({p for p, _ in results})
        print(
            f"auto_offset_reset={reset:<8}: {short}/{ROUNDS} rounds read fewer than "
            f"{RECORDS} records after seek_to_beginning (positions seen: {positions})"
        )


async def main() -> None:
    if len(sys.argv) > 1:
        await run(sys.argv[1])
        return
    from mulambda.harness.infra import PrivateInfra  # Kafka only, free ports, temp home

    infra = PrivateInfra(("kafka",))
    await infra.start()
    try:
        await run(infra.bootstrap_servers)
    finally:
        await infra.stop()


if __name__ == "__main__":
    asyncio.run(main())
