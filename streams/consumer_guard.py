"""Offset continuity guard for Faust's consumer: no record is skipped across a rebalance.

Why this exists (measured, not assumed). The fault suite's SIGKILL scenario (tests/faults/
test_worker_kills.py: 2 workers, 10,000 alerts, 4 kills) lost records in 1 run of 5: the incident
stage never saw two `alerts.normalized` records and the group changelog jumped over them. The
mechanism is Faust's (faust-streaming 0.15.3, transport/consumer.py), reported upstream as
faust-streaming #216, #221 and #606:

1. After a rebalance Faust seeks every stream partition to its committed offset C and sets its
   "read offset" to C. A record fetched *before* the rebalance (offset S > C) can still come out of
   the fetch loop afterwards.
2. The fetch loop treats S > C + 1 as a *gap* in the partition (meant for compacted topics and
   transaction markers) and records C+1 .. S-1 as if they had been acknowledged; its read offset
   becomes S.
3. The records C .. S-1, fetched again from C, are now below the read offset and are dropped
   before any agent sees them, and the next commit moves past them. A crash then, or just the next
   commit, loses them.

Upstream has no fix (#606 is open). The guard below keeps Faust's loop and changes three small
things, only for the topics listed (pipeline topics that are neither compacted nor written inside
transactions, where offsets are consecutive and a gap can only mean a stale record):

* `_add_gap` does nothing for them, so unprocessed offsets are never counted as done;
* the consumer's callback delivers a record only if its offset is the one expected next for its
  partition (the committed offset after a seek, then offset + 1). A record ahead of it is held
  back (not delivered, the read offset is not advanced) and a seek back to the expected offset is
  scheduled; a record behind it was delivered already and is dropped;
* the expected offsets are reset from the committed offsets on every seek to them.

If a seek back finds the expected offset deleted by retention (earliest offset beyond it), the
guard accepts the jump and says so in the log and the metric: those records are gone from Kafka.

Counted in `pagerstream_consumer_out_of_order_total{topic,action}`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("pagerstream.consumer_guard")


def _none() -> None:
    return None


class _ReadOffsets(defaultdict):
    """Faust's per-partition read offsets; a set right after a held-back record is ignored.

    Faust's fetch loop binds `_read_offset.__setitem__` once and calls it after every callback,
    so this is the one place where "do not advance past a record nobody processed" can be said."""

    def __init__(self, base: dict, hold: set[tuple[Any, int]]) -> None:
        super().__init__(_none, base)  # Faust's own is defaultdict(lambda: None)
        self._hold = hold

    def __setitem__(self, tp: Any, offset: Any) -> None:
        if (tp, offset) in self._hold:
            self._hold.discard((tp, offset))
            return
        super().__setitem__(tp, offset)


class OffsetGuard:
    def __init__(self, consumer: Any, topics: Iterable[str], count: Callable[[str, str], None] | None = None,
                 grace_s: float = 1.0) -> None:
        self.consumer = consumer
        self.grace_s = grace_s  # how long the due record may take to arrive before seeking back
        self.topics = frozenset(topics)
        self.count = count or (lambda topic, action: None)
        self.expected: dict[Any, int | None] = {}
        self._hold: set[tuple[Any, int]] = set()
        self._reseeking: set[Any] = set()
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    def install(cls, consumer: Any, topics: Iterable[str], count: Callable[[str, str], None] | None = None,
                grace_s: float = 1.0) -> "OffsetGuard":
        """Wrap `consumer` in place. Must run before Faust's fetcher starts (it binds these once)."""
        g = cls(consumer, topics, count, grace_s)
        consumer._read_offset = _ReadOffsets(consumer._read_offset, g._hold)
        inner_callback = consumer.callback
        inner_gap = consumer._add_gap
        inner_seek = consumer.perform_seek
        inner_revoked = consumer.on_partitions_revoked

        async def callback(message: Any) -> Any:
            if g.admit(message):
                return await inner_callback(message)
            return None

        async def add_gap(tp: Any, offset_from: int, offset_to: int) -> None:
            if tp.topic in g.topics:
                return  # consecutive offsets: a "gap" is a stale record, handled in admit()
            await inner_gap(tp, offset_from, offset_to)

        async def perform_seek() -> None:
            await inner_seek()
            g.reset(dict(consumer._read_offset))

        async def on_partitions_revoked(revoked: set) -> None:
            g.forget(revoked)
            await inner_revoked(revoked)

        consumer.callback = callback
        consumer._add_gap = add_gap
        consumer.perform_seek = perform_seek
        consumer.on_partitions_revoked = on_partitions_revoked
        return g

    # --- bookkeeping ----------------------------------------------------------------------------
    def reset(self, read_offsets: dict) -> None:
        """After Faust sought to the committed offsets: those are the next records to deliver."""
        self._hold.clear()
        for tp, off in read_offsets.items():
            if tp.topic in self.topics:
                self.expected[tp] = off if off is not None and off >= 0 else None

    def forget(self, tps: Iterable[Any]) -> None:
        for tp in tps:
            self.expected.pop(tp, None)
            self._reseeking.discard(tp)

    def admit(self, message: Any) -> bool:
        tp, offset = message.tp, message.offset
        if tp.topic not in self.topics:
            return True
        want = self.expected.get(tp)
        if want is None or offset == want:
            self.expected[tp] = offset + 1
            return True
        if offset < want:  # delivered already in this assignment (a refetch after a seek back)
            self.count(tp.topic, "behind")
            return False
        # ahead of what is due: a record fetched before the last seek. Hold it back, seek back.
        self._hold.add((tp, offset))
        self.count(tp.topic, "ahead")
        if tp not in self._reseeking:
            log.warning("consumer: %s[%d] offset %d arrived while %d is due; held back, seeking back to %d",
                        tp.topic, tp.partition, offset, want, want)
            self._reseeking.add(tp)
            t = asyncio.ensure_future(self._seek_back(tp, want))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        return False

    async def _seek_back(self, tp: Any, want: int) -> None:
        try:
            # Usually the due record follows the stale one within a fetch (Faust did seek to it).
            await asyncio.sleep(self.grace_s)
            if self.expected.get(tp) != want:
                return  # progress or a new assignment meanwhile: nothing to repair
            earliest = (await self.consumer.earliest_offsets(tp)).get(tp)
            if self.expected.get(tp) != want:
                return
            if earliest is not None and earliest > want:
                log.error("consumer: %s[%d] offsets %d..%d were deleted by retention before being processed",
                          tp.topic, tp.partition, want, earliest - 1)
                self.count(tp.topic, "retention")
                self.expected[tp] = None  # take what comes next
                return
            self.count(tp.topic, "reseek")
            await self.consumer.seek(tp, want)
        except Exception:  # a rebalance in between: the next perform_seek sets things right
            log.warning("consumer: seek back on %s[%d] failed", tp.topic, tp.partition, exc_info=True)
        finally:
            self._reseeking.discard(tp)
