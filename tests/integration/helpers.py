"""Small helpers for integration tests: read decoded records from a topic, poll until true."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pagerstream.schemas.codec import decode_any


def read_topic(bootstrap: str, topic: str, *, idle: float = 1.5) -> list[dict[str, Any]]:
    """Every record currently in the topic, decoded, in partition/offset order."""

    async def go() -> list[dict[str, Any]]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", group_id=None)
        await c.start()
        out: list[dict[str, Any]] = []
        try:
            last = time.monotonic()
            while time.monotonic() - last < idle:
                batch = await c.getmany(timeout_ms=300)
                for msgs in batch.values():
                    for m in msgs:
                        last = time.monotonic()
                        out.append({"key": m.key, "partition": m.partition, "offset": m.offset,
                                    "raw": m.value, "value": decode_any(m.value)})
        finally:
            await c.stop()
        return out

    return asyncio.run(go())


def produce_bytes(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await p.start()
        try:
            for k, v in items:
                await p.send_and_wait(topic, v, key=k)
        finally:
            await p.stop()

    asyncio.run(go())


def eventually(fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.5, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}: last={last!r}")
