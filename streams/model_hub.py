"""Every worker's read-only copies of the shared models, kept current from Kafka.

- The classifier: the latest checkpoint on the compacted `models.checkpoints` topic (key
  `classify`). Checkpoints are Fernet tokens made with ENCRYPTION_KEY (pagerstream/crypto.py): the
  classifier state is a pickle, and only a token that authenticates is unpickled. The one writer is
  the learner agent (streams/learn_agents.py) or `pagerstream models train ... --publish`.
- The index of past incidents for "similar incidents": every resolved IncidentEvent on `incidents`
  (all partitions, not as a group member: each worker needs all of them), from the last
  INDEX_DAYS days, at most `max_incidents` (oldest forgotten first; tombstones compacted).

Both are rebuilt from Kafka on start, so a restart or a rebalance never starts cold.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections import deque
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pagerstream.models.classify import AlertClassifier
from pagerstream.models.similar import IncidentIndex
from pagerstream.processors.intel import index_resolved
from pagerstream.schemas import AvroCodec, DecodeError

from pagerstream.config import Secret
from pagerstream.connections import KafkaTarget, kafka_consumer, kafka_producer
from pagerstream.crypto import InvalidToken, NoKey, box

log = logging.getLogger("pagerstream.models")
INDEX_DAYS = 30
INDEX_MAX_RECORDS_PER_PARTITION = 200_000  # startup bound: read at most this many records back


def seal_checkpoint(key: Secret | str, model: str, state: dict[str, Any], **meta: Any) -> bytes:
    """A checkpoint record value: Fernet(zlib(header length, JSON header, pickled model)).

    Compressed before encryption: the classifier trained on 1,155 rules pickles to 2.8 MB and
    compresses to 0.67 MB (0.89 MB as a Fernet token), under Kafka's default 1 MB message limit;
    the topic is created with a 16 MB limit for larger models all the same.
    """
    st = dict(state)
    blob = st.pop("model", b"")
    header = json.dumps({"model": model, "created_at": int(time.time() * 1000), "state": st, **meta}).encode()
    return box(key).encrypt(zlib.compress(len(header).to_bytes(4, "big") + header + blob, 6))


def open_checkpoint(key: Secret | str, value: bytes) -> dict[str, Any]:
    """The envelope of a checkpoint record; raises InvalidToken if it does not authenticate."""
    raw = zlib.decompress(box(key).decrypt(value))
    n = int.from_bytes(raw[:4], "big")
    env = json.loads(raw[4 : 4 + n])
    env["state"]["model"] = raw[4 + n :]
    return env


async def publish_checkpoint(bootstrap: KafkaTarget, topic: str, key: Secret | str, model: str,
                             state: dict[str, Any], **meta: Any) -> None:
    p = kafka_producer(bootstrap, acks="all", enable_idempotence=True, max_request_size=16 * 2**20)
    await p.start()
    try:
        await p.send_and_wait(topic, seal_checkpoint(key, model, state, **meta), key=model.encode())
    finally:
        await p.stop()


async def _partitions(c: AIOKafkaConsumer, topic: str) -> set[int]:
    """All partitions of a topic this consumer is not subscribed to.

    A consumer's metadata covers only its subscriptions: partitions_for_topic() stays None for
    any other topic, so the topic is added to the client's metadata request explicitly.
    """
    for _ in range(50):
        c._client.add_topic(topic)  # aiokafka has no public call for this
        await c._client.force_metadata_update()
        parts = c._client.cluster.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"topic {topic} has no partitions (does it exist?)")


class ModelHub:
    def __init__(self, bootstrap: KafkaTarget, checkpoints_topic: str, incidents_topic: str, key: Secret,
                 metrics: Any = None, max_incidents: int = 10_000) -> None:
        self.bootstrap = bootstrap
        self.checkpoints_topic = checkpoints_topic
        self.incidents_topic = incidents_topic
        self.key = key
        self.metrics = metrics
        self.max_incidents = max_incidents
        self.classifier: AlertClassifier | None = None
        self.classifier_meta: dict[str, Any] = {}
        self.index = IncidentIndex(rerank=10)  # rerank 10 instead of 30: ~1 ms per query at 10k
        self._order: deque[str] = deque()
        self.ready = asyncio.Event()  # checkpoints read up to the end once
        self.index_ready = asyncio.Event()
        self.rejected = 0
        self._codec = AvroCodec("incident_event")
        self._tasks: list[asyncio.Task] = []
        self._consumers: list[AIOKafkaConsumer] = []

    async def start(self) -> None:
        await self._start_checkpoints()
        self._tasks.append(asyncio.create_task(self._run_index()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for c in self._consumers:
            try:
                await c.stop()
            except Exception as e:  # noqa: BLE001 - shutting down anyway
                log.debug("model hub consumer stop: %s", e)

    # --- checkpoints ----------------------------------------------------------------------------
    async def _start_checkpoints(self) -> None:
        c = kafka_consumer(self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                           fetch_max_bytes=64 * 2**20, max_partition_fetch_bytes=32 * 2**20)
        await c.start()
        self._consumers.append(c)
        tps = [TopicPartition(self.checkpoints_topic, p) for p in await _partitions(c, self.checkpoints_topic)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        latest: dict[str, bytes | None] = {}
        while any([await c.position(tp) < end[tp] for tp in tps]):
            for msgs in (await c.getmany(timeout_ms=500)).values():
                for m in msgs:
                    latest[(m.key or b"").decode()] = m.value
        for name, value in latest.items():
            self._apply(name, value)
        self.ready.set()
        self._tasks.append(asyncio.create_task(self._follow(c, self._on_checkpoint)))

    def _on_checkpoint(self, m: Any) -> None:
        self._apply((m.key or b"").decode(), m.value)

    def _apply(self, name: str, value: bytes | None) -> None:
        if name != "classify":
            return
        if value is None:
            self.classifier, self.classifier_meta = None, {}
            return
        try:
            env = open_checkpoint(self.key, value)
            model = AlertClassifier.from_state(env["state"])
        except NoKey:
            self.rejected += 1
            log.warning("a classifier checkpoint is on %s but ENCRYPTION_KEY is not set: not loading it",
                        self.checkpoints_topic)
            return
        except (InvalidToken, ValueError, KeyError) as e:
            self.rejected += 1
            log.error("classifier checkpoint rejected (%s): keeping the current model", type(e).__name__)
            return
        self.classifier = model
        self.classifier_meta = {k: v for k, v in env.items() if k != "state"}
        if self.metrics is not None:
            self.metrics.model_examples.labels("classify").set(model.n_learned)
            self.metrics.model_checkpoint_age.labels("classify").set(env.get("created_at", 0) / 1000)
        log.info("classifier checkpoint loaded: %s examples learned", model.n_learned)

    # --- past incidents -------------------------------------------------------------------------
    async def _run_index(self) -> None:
        c = kafka_consumer(self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
        await c.start()
        self._consumers.append(c)
        try:
            parts = await _partitions(c, self.incidents_topic)
            tps = [TopicPartition(self.incidents_topic, p) for p in sorted(parts or {0})]
            c.assign(tps)
            since = int((time.time() - INDEX_DAYS * 86400) * 1000)
            starts = await c.offsets_for_times({tp: since for tp in tps})
            begin = await c.beginning_offsets(tps)
            end = await c.end_offsets(tps)
            for tp in tps:
                at = starts.get(tp)
                off = at.offset if at is not None else end[tp]
                c.seek(tp, max(off, begin[tp], end[tp] - INDEX_MAX_RECORDS_PER_PARTITION))
            while any([await c.position(tp) < end[tp] for tp in tps]):
                for msgs in (await c.getmany(timeout_ms=500, max_records=2000)).values():
                    for m in msgs:
                        self._index_record(m)
                await asyncio.sleep(0)  # startup reading must not starve the agents
            self.index_ready.set()
            log.info("similar-incident index ready: %d past incidents", len(self.index))
            await self._follow(c, self._index_record)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("similar-incident index stopped; similar incidents will not be attached")

    def _index_record(self, m: Any) -> None:
        if not m.value:
            return
        try:
            rec = self._codec.decode(m.value)
        except DecodeError:
            return
        if rec["change"] not in ("resolved", "auto_resolved") or not rec["incident_id"]:
            return
        if rec["incident_id"] in self.index:
            return
        index_resolved(self.index, rec)
        self._order.append(rec["incident_id"])
        while len(self._order) > self.max_incidents:
            self.index.remove(self._order.popleft())
        if self.index.tombstones > max(1000, len(self.index)):
            self.index.compact()
        if self.metrics is not None:
            self.metrics.similar_index.set(len(self.index))

    async def _follow(self, c: AIOKafkaConsumer, apply: Any) -> None:
        while True:
            batch = await c.getmany(timeout_ms=1000, max_records=2000)
            for msgs in batch.values():
                for m in msgs:
                    try:
                        apply(m)
                    except Exception:  # one bad record must not stop the follower
                        log.exception("model hub could not apply a record")
