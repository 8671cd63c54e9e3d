"""streams/consumer_guard.py against Faust's own fetch loop (Consumer._drain_messages, unchanged).

The loop runs for real on a real (unstarted) Faust consumer; only the record source (getmany) and
the two broker round trips of a seek back (earliest_offsets, seek) are stand-ins, recorded."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from faust.types import TP
from faust.types.tuples import Message

from pagerstream.config import load_settings
from pagerstream.streams.app import Pipeline
from pagerstream.streams.consumer_guard import OffsetGuard


def _msg(tp: TP, off: int) -> Message:
    return Message(tp.topic, tp.partition, off, 0.0, 0, None, b"k", b"v", None, tp=tp, generation_id=0)


class _Fetcher:  # Faust's Fetcher service, as far as _drain_messages reads it: its stop flag
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


@pytest.fixture
def pipeline(tmp_path: Any) -> Pipeline:  # one per test: Faust's services keep the event loop they met first
    return Pipeline(load_settings({"PAGERSTREAM_INGRESS_AUTH": "open", "PAGERSTREAM_DATADIR": str(tmp_path)}))


def _drain(pipeline: Pipeline, offsets: list[int], *, committed: int, guard: bool, earliest: int = 0
           ) -> dict[str, Any]:
    """Feed `offsets` of alerts.normalized[0] through Faust's fetch loop after a seek to `committed`."""

    async def run() -> dict[str, Any]:
        c = faust.App._new_consumer(pipeline.app)  # Faust's consumer, without the app's own guard
        tp = TP(pipeline.topic_names["alerts.normalized"], 0)
        delivered: list[int] = []
        seeks: list[tuple[TP, int]] = []
        counted: list[str] = []

        async def record(m: Message) -> None:
            delivered.append(m.offset)

        async def earliest_offsets(*tps: TP) -> dict[TP, int]:
            return {t: earliest for t in tps}

        async def seek(t: TP, off: int) -> None:
            seeks.append((t, off))
            c._read_offset[t] = off

        c.callback = record
        c.earliest_offsets = earliest_offsets
        c.seek = seek
        g = OffsetGuard.install(c, [tp.topic], lambda topic, action: counted.append(action),
                                grace_s=0.05) if guard else None
        c._read_offset[tp] = committed
        c._committed_offset[tp] = committed
        if g:
            g.reset({tp: committed})
        fetcher = _Fetcher()

        async def getmany(timeout: float) -> Any:
            for off in offsets:
                yield tp, _msg(tp, off)
            fetcher._stopped.set()

        c.getmany = getmany
        await c._drain_messages(fetcher)
        await asyncio.sleep(0.2)  # the scheduled seek back, after its grace
        return {"delivered": delivered, "seeks": [o for _, o in seeks], "counted": counted,
                "expected": g.expected.get(tp) if g else None}

    return asyncio.run(run())


# a record prefetched before the rebalance (105) comes out first, then the partition from the commit
STALE_FIRST = [105, 100, 101, 102, 103, 104, 105, 106]


def test_without_the_guard_faust_drops_the_records_behind_a_stale_one(pipeline: Pipeline) -> None:
    # the upstream behaviour the guard exists for: 100..104 never reach an agent
    r = _drain(pipeline, STALE_FIRST, committed=100, guard=False)
    assert r["delivered"] == [105, 105, 106]


def test_the_guard_delivers_every_record_once_and_in_order(pipeline: Pipeline) -> None:
    r = _drain(pipeline, STALE_FIRST, committed=100, guard=True)
    assert r["delivered"] == [100, 101, 102, 103, 104, 105, 106]
    assert r["counted"][0] == "ahead"
    assert r["expected"] == 107
    # the records did come from the committed offset, so the seek back found nothing to repair
    assert r["seeks"] == []


def test_a_stale_record_with_nothing_behind_it_makes_the_guard_seek_back(pipeline: Pipeline) -> None:
    r = _drain(pipeline, [105, 106], committed=100, guard=True)
    assert r["delivered"] == []
    assert r["seeks"] == [100]
    assert r["counted"] == ["ahead", "ahead", "reseek"]
    assert r["expected"] == 100


def test_records_deleted_by_retention_are_accepted_and_counted(pipeline: Pipeline) -> None:
    r = _drain(pipeline, [105, 106], committed=100, guard=True, earliest=103)
    assert r["seeks"] == []
    assert "retention" in r["counted"]
    assert r["expected"] is None  # the next record is taken as it comes


def test_a_refetch_behind_the_expected_offset_is_not_delivered_twice(pipeline: Pipeline) -> None:
    # Faust's loop itself drops offsets below its read offset; the guard drops those between the
    # read offset (moved back by a seek) and what it delivered already
    async def run() -> list[bool]:
        c = faust.App._new_consumer(pipeline.app)
        tp = TP(pipeline.topic_names["alerts.normalized"], 0)
        g = OffsetGuard(c, [tp.topic])
        g.reset({tp: 100})
        return [g.admit(_msg(tp, o)) for o in (100, 101, 100, 101, 102)]

    assert asyncio.run(run()) == [True, True, False, False, True]


def test_gaps_are_ignored_only_on_guarded_topics(pipeline: Pipeline) -> None:
    async def run() -> tuple[Any, Any]:
        c = faust.App._new_consumer(pipeline.app)
        guarded = TP(pipeline.topic_names["alerts.normalized"], 0)
        other = TP("some-compacted-topic", 0)
        OffsetGuard.install(c, [guarded.topic])
        await c._add_gap(guarded, 101, 105)
        await c._add_gap(other, 101, 105)
        return c._gap.get(guarded), c._gap.get(other)

    g_guarded, g_other = asyncio.run(run())
    assert not g_guarded
    assert g_other and sorted((i.begin, i.end) for i in g_other) == [(101, 106)]


def test_the_app_guards_every_non_compacted_pipeline_topic(pipeline: Pipeline) -> None:
    topics = set(pipeline.consecutive_topics())
    n = pipeline.topic_names
    assert {n["alerts.raw"], n["alerts.normalized"], n["pagerduty.outbox"], n["incidents"]} <= topics
    assert n["incidents.lifecycle"] not in topics and n["models.checkpoints"] not in topics  # compacted
    c = pipeline.app.consumer
    assert pipeline.offset_guard.topics == frozenset(topics)
    assert c.callback.__qualname__.startswith("OffsetGuard.install")


def test_the_forwarder_does_not_call_for_a_partition_it_may_no_longer_own(pipeline: Pipeline) -> None:
    # streams/delivery_agents.py _owns: a record of an earlier consumer generation, or one reaching a
    # worker whose consumer cannot say what it owns, is left to the partition's current owner
    tp = TP(pipeline.topic_names["pagerduty.outbox"], 2)
    stale = Message(tp.topic, tp.partition, 7, 0.0, 0, None, b"k", b"v", None, tp=tp,
                    generation_id=pipeline.app.consumer_generation_id - 1)
    current = Message(tp.topic, tp.partition, 7, 0.0, 0, None, b"k", b"v", None, tp=tp,
                      generation_id=pipeline.app.consumer_generation_id)
    counted = lambda: pipeline.metrics.records.labels("forward", "not_owner")._value.get()
    assert pipeline._owns(stale) is False and counted() == 1
    assert pipeline._owns(current) is False and counted() == 2  # unstarted consumer: no assignment known
