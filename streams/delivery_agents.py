"""The PagerDuty side of the pipeline: the agents that read pagerduty.outbox and pagerduty.retry.

Calls for different stream keys go out concurrently, one key's calls strictly in sequence order;
what cannot be delivered now is parked on the retry topic (behind it, later calls of the same key),
and only PagerDuty's permanent refusals are dead-lettered. The HTTP side (rate limit, breaker,
in-place retries) is streams/forwarder.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

import faust

from pagerstream.schemas import DecodeError

log = logging.getLogger("pagerstream.forward")


class DeliveryAgents:
    """Mixed into Pipeline (streams/app.py), which provides the topics, tables, codecs and metrics."""

    async def _agent_forward(self, stream: faust.StreamT) -> AsyncIterator[None]:
        """One actor per outbox partition (isolated_partitions): partitions deliver concurrently,
        each one strictly in offset order, acknowledged in order.

        Before a call goes out for a key whose previous call's delivered mark may still sit in the
        producer buffer, the buffer is flushed: after a crash, a replay may repeat the *last* call of a
        key, never an earlier one after a later one.
        """
        while self.forwarder is None:
            await asyncio.sleep(0.05)
        unflushed: set[bytes] = set()
        async for event in stream.events():
            if (event.message.key or b"") in unflushed or len(unflushed) > 10_000:
                await self.app.producer.flush()
                unflushed.clear()
            k = await self._forward_one(event)
            if k is not None:
                unflushed.add(k)
            yield None

    async def _forward_one(self, event: Any) -> bytes | None:
        """Handle one outbox record; return its key when a delivered mark was written."""
        msg = event.message
        try:
            ev = self.codecs["pagerduty_event"].decode(event.value)
        except DecodeError as e:
            await self._dead_letter("forward", str(e), e, msg, topic=self.pd_dlq)
            return None
        k = ev["stream_key"].encode()
        if not self._owns(msg):
            return None
        done = self.delivered.get(k) or 0
        if ev["seq"] <= done:
            self.metrics.records.labels("forward", "already_delivered").inc()
            return None
        try:
            if self.parked.get(k):  # an earlier call of this key waits on the retry topic: queue behind it
                await self._park(ev, "earlier event of this key is parked", int(time.time() * 1000))
                return None
            await self._deliver(ev, msg, k, inline=True)
            return k
        except Exception as e:  # e.g. Kafka or Redis trouble mid-call: park it, never drop it
            log.exception("forward failed; parking the event")
            await self._park(dict(ev, last_error=f"internal: {e}"[:500]), "internal error",
                             int(time.time() * 1000) + 5000)
            return None

    async def _agent_retry(self, stream: faust.StreamT) -> AsyncIterator[None]:
        while self.forwarder is None:
            await asyncio.sleep(0.05)
        async for event in stream.events():
            msg = event.message
            try:
                ev = self.codecs["pagerduty_event"].decode(event.value)
            except DecodeError as e:
                await self._dead_letter("forward", str(e), e, msg, topic=self.pd_dlq)
                continue
            k = ev["stream_key"].encode()
            done = self.delivered.get(k) or 0
            pending = [s for s in (self.parked.get(k) or []) if s > done]
            if ev["seq"] <= done:
                self._set_parked(k, pending)
                continue
            if pending and min(pending) < ev["seq"]:
                # Not this key's head yet: go round again behind it (order kept by seq).
                await self._repark(ev, max(ev["not_before"], int(time.time() * 1000) + 500))
                continue
            wait_ms = ev["not_before"] - int(time.time() * 1000)
            if wait_ms > 0:
                await asyncio.sleep(min(wait_ms, 30_000) / 1000)
                if ev["not_before"] - int(time.time() * 1000) > 0:
                    await self._repark(ev, ev["not_before"])
                    continue
            if not self._owns(msg):
                continue
            try:
                await self._deliver(ev, msg, k, inline=False)
                await self.app.producer.flush()
            except Exception as e:
                log.exception("retry failed; parking the event again")
                await self._repark(dict(ev, last_error=f"internal: {e}"[:500]), int(time.time() * 1000) + 5000)
            yield None

    def _owns(self, msg: Any) -> bool:
        """Whether this worker may still call PagerDuty for a record of this partition.

        Seen in the SIGKILL soak (docs/faults.md): a worker whose consumer lost its assignment in a
        rebalance (Faust's fetcher crashed on it, and its producer was already stopped) went on
        forwarding records it had buffered while the partition's new owner replayed them: PagerDuty
        got one key's `resolve, trigger` twice. A record from an earlier consumer generation, from a
        partition no longer assigned here, or reaching a stopping worker is left alone (not called,
        not parked): the partition's current owner processes it from the committed offset. Asked before
        the first call and again before every in-place retry (Forwarder.attempt's `may_call`)."""
        app = self.app
        try:
            ok = (not app.should_stop and msg.generation_id == app.consumer_generation_id
                  and msg.tp in app.consumer.assignment())
        except Exception:  # noqa: BLE001 - no consumer / assignment to ask: not safe to call
            ok = False
        if not ok:
            self.metrics.records.labels("forward", "not_owner").inc()
        return ok

    async def _deliver(self, ev: dict[str, Any], msg: Any, k: bytes, *, inline: bool) -> None:
        assert self.forwarder is not None
        res = await self.forwarder.attempt(ev, inline_budget_s=None if inline else 0.0,
                                           may_call=lambda: self._owns(msg))
        now = int(time.time() * 1000)
        if res.outcome == "abandoned":
            return  # the partition's owner replays this record from the committed offset
        if res.outcome == "delivered":
            self.delivered[k] = ev["seq"]
            self._set_parked(k, [s for s in (self.parked.get(k) or []) if s > ev["seq"]])
            self.metrics.e2e_latency.observe(max(0.0, (now - ev["created_at"]) / 1000))
            self.metrics.records.labels("forward", "delivered").inc()
        elif res.outcome == "permanent":
            self.delivered[k] = ev["seq"]  # a refused call must not block the calls behind it
            self._set_parked(k, [s for s in (self.parked.get(k) or []) if s > ev["seq"]])
            await self._dead_letter("forward", f"PagerDuty refused ({res.status}): {res.reason}", None, msg,
                                    topic=self.pd_dlq, attributes={"stream_key": ev["stream_key"],
                                                                   "event_id": ev["event_id"]})
        else:
            ev = dict(ev, attempt=int(ev.get("attempt") or 0) + 1, last_error=res.reason[:500])
            if inline:
                await self._park(ev, res.reason, res.not_before_ms or now + 1000)
            else:
                await self._repark(ev, res.not_before_ms or now + 1000)

    async def _park(self, ev: dict[str, Any], reason: str, not_before: int) -> None:
        k = ev["stream_key"].encode()
        cur = list(self.parked.get(k) or [])
        if ev["seq"] not in cur:
            cur.append(ev["seq"])
        self._set_parked(k, sorted(cur))
        self.metrics.pd_parked.labels(reason.split(":")[0][:40]).inc()
        await self._repark(ev, not_before)

    async def _repark(self, ev: dict[str, Any], not_before: int) -> None:
        ev = dict(ev, not_before=int(not_before))
        fut = await self.retry_topic.send(key=ev["stream_key"].encode(), value=self.codecs["pagerduty_event"].encode(ev))
        await fut  # the source offset may be committed right after: the parked copy must be durable first

    def _set_parked(self, k: bytes, seqs: list[int]) -> None:
        if seqs:
            if self.parked.get(k) != seqs:
                self.parked[k] = seqs
        elif self.parked.get(k) is not None:
            del self.parked[k]
