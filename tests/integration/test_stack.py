"""Smoke tests for the local stack: a real Kafka round trip and a Redis INCR."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

# tests/ has no __init__.py; make `tests.stack` importable however pytest was launched.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.stack import ensure_stack, kafka_bootstrap, redis_url  # noqa: E402

N_MESSAGES = 100
N_KEYS = 7
PARTITIONS = 3


async def _kafka_roundtrip(bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"it-stack-{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        resp = await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
        failed = [err for err in resp.topic_errors if err[1] != 0]
        assert not failed, f"create_topics failed: {failed}"

        # Value carries the per-key sequence number so order can be checked on the way back.
        sent: list[tuple[str, int]] = []
        seq: dict[str, int] = defaultdict(int)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            futures = []
            for i in range(N_MESSAGES):
                key = f"key-{i % N_KEYS}"
                n = seq[key]
                seq[key] += 1
                sent.append((key, n))
                futures.append(await producer.send(topic, key=key.encode(), value=f"{key}:{n}".encode()))
            metas = await asyncio.gather(*futures)
        finally:
            await producer.stop()
        assert len(metas) == N_MESSAGES
        assert {m.partition for m in metas} <= set(range(PARTITIONS))

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"{topic}-group",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        received = []
        try:
            deadline = time.monotonic() + 30
            while len(received) < N_MESSAGES and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    received.extend(records)
            await consumer.commit()
        finally:
            await consumer.stop()
    finally:
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()

    assert len(received) == N_MESSAGES, f"got {len(received)} of {N_MESSAGES} messages back"
    by_key: dict[str, list[int]] = defaultdict(list)
    partitions_by_key: dict[str, set[int]] = defaultdict(set)
    for rec in received:
        key = rec.key.decode()
        vkey, n = rec.value.decode().rsplit(":", 1)
        assert vkey == key
        by_key[key].append(int(n))
        partitions_by_key[key].add(rec.partition)
    assert sorted((k, n) for k, ns in by_key.items() for n in ns) == sorted(sent)
    for key, ns in by_key.items():
        assert ns == list(range(seq[key])), f"order broken for {key}: {ns}"
        assert len(partitions_by_key[key]) == 1, f"{key} spread over {partitions_by_key[key]}"


@pytest.mark.integration
def test_kafka_produce_consume_roundtrip() -> None:
    ensure_stack()
    asyncio.run(_kafka_roundtrip(kafka_bootstrap()))


@pytest.mark.integration
def test_redis_incr() -> None:
    import redis

    ensure_stack()
    client = redis.Redis.from_url(redis_url())
    key = f"it-stack:{uuid.uuid4().hex}"
    try:
        assert client.incr(key) == 1
        assert client.incr(key) == 2
        assert client.incrby(key, 40) == 42
    finally:
        client.delete(key)
        client.close()
