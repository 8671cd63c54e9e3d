"""Every worker's copy of the services catalog, read from the compacted catalog topic.

Reading the compacted topic from the beginning up to the end offsets gives the latest entry
per service; after that the view keeps following it, so a `pagerstream catalog publish`
reaches all running workers without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from pagerstream.processors.catalog import EMPTY_CATALOG, Catalog
from pagerstream.schemas import AvroCodec, DecodeError

from pagerstream.connections import KafkaTarget, kafka_consumer, kafka_producer

log = logging.getLogger("pagerstream.catalog")


async def _behind(c: AIOKafkaConsumer, tps: list[TopicPartition], end: dict) -> bool:
    for tp in tps:
        if await c.position(tp) < end[tp]:
            return True
    return False


class CatalogView:
    def __init__(self, bootstrap: KafkaTarget, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.codec = AvroCodec("service_entry")
        self.current: Catalog = EMPTY_CATALOG
        self.ready = asyncio.Event()
        self._entries: dict[str, dict] = {}
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.errors = 0

    async def start(self) -> None:
        c = self._consumer = kafka_consumer(self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
        await c.start()
        tps = [TopicPartition(self.topic, p) for p in (c.partitions_for_topic(self.topic) or {0})]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        while await _behind(c, tps, end):
            batch = await c.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    self._apply(m.key, m.value)
        self._rebuild()
        self.ready.set()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._consumer:
            await self._consumer.stop()

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            if batch:
                for msgs in batch.values():
                    for m in msgs:
                        self._apply(m.key, m.value)
                self._rebuild()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        name = (key or b"").decode()
        if value is None:
            self._entries.pop(name, None)
            return
        try:
            rec = self.codec.decode(value)
            self._entries[name] = json.loads(rec["spec_json"])
        except (DecodeError, ValueError) as e:
            self.errors += 1
            log.error("catalog entry %r unreadable: %s", name, e)

    def _rebuild(self) -> None:
        try:
            self.current = Catalog.from_entries(list(self._entries.values()))
        except Exception as e:  # keep serving the previous catalog rather than none
            self.errors += 1
            log.error("catalog rebuild failed, keeping the previous one: %s", e)


async def publish_catalog(bootstrap: KafkaTarget, topic: str, catalog: Catalog) -> dict[str, int]:
    """Publish one entry per service and a tombstone for each service no longer in the file."""
    codec = AvroCodec("service_entry")
    consumer = kafka_consumer(bootstrap, enable_auto_commit=False)
    await consumer.start()
    existing: set[str] = set()
    try:
        tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        while await _behind(consumer, tps, end):
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                for m in msgs:
                    name = (m.key or b"").decode()
                    (existing.add if m.value is not None else existing.discard)(name)
    finally:
        await consumer.stop()
    producer = kafka_producer(bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        now = int(time.time() * 1000)
        names = set()
        for entry in catalog.to_entries():
            names.add(entry["name"])
            rec = {"name": entry["name"], "spec_json": json.dumps(entry, sort_keys=True),
                   "catalog_version": catalog.version, "published_at": now}
            await producer.send_and_wait(topic, codec.encode(rec), key=entry["name"].encode())
        removed = existing - names
        for name in removed:
            await producer.send_and_wait(topic, None, key=name.encode())
        return {"published": len(names), "removed": len(removed)}
    finally:
        await producer.stop()
