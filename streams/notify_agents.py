"""Notifications as consumers of the `incidents` topic (pagerstream/notify/, docs/notifications.md).

    incidents ──notify──► Delivery (per destination: rate limit, breaker, retries, bundling)
                  │            ├──► notifications.history     every attempt (JSON, key incident_id)
                  │            └──► notifications.dead-letter  DeadLetter JSON lines (replay command)
                  └── not settled within NOTIFY_INLINE_S ──► notifications.retry ──notify-retry──┘

Nothing is lost and a slow destination does not hold the others: the agent waits at most
NOTIFY_INLINE_S for the deliveries of one incident change, then writes the ones still pending to
`notifications.retry` (durably, before its offset is committed) and moves on; the delivery keeps
going in the background. The retry agent submits them again; a delivery that finished in the
meantime is recognised by its idempotency key (Redis) and skipped, so a message goes out once in
the normal case and at most once more after a crash between the provider's answer and the record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
from aiohttp import web
from pagerstream.schemas import DecodeError

log = logging.getLogger("pagerstream.notify")
NOTIFY_INLINE_S = 5.0  # how long one incident change may wait for its deliveries before being parked
# Changes in flight at once. The agent acks each record itself once its deliveries settled or were
# parked (the stream is `noack`) and Faust commits only the contiguous acked prefix, so several
# changes can be on their way without a crash losing any. One at a time, bench/notify.py measured
# one message per ~30 ms on a loaded machine (11 Redis round trips + the HTTP call, never overlapping).
NOTIFY_IN_FLIGHT = 32
RETRY_MAX_WAIT_S = 30.0  # a retry record not yet due is waited for at most this long, then requeued
# Changes people want to hear about; duplicates, drops and held-back (paused) incidents are noise.
NOTIFY_CHANGES = frozenset({"opened", "acknowledged", "resolved", "auto_resolved", "alert_added"})
QUIET_DETAILS = frozenset({"paused", "resolved_while_paused", "acknowledged_while_paused"})


def notifiable(rec: dict[str, Any]) -> bool:
    return bool(rec.get("incident_id")) and rec["change"] in NOTIFY_CHANGES \
        and rec.get("change_detail") not in QUIET_DETAILS


class NotifyAgents:
    """Mixed into Pipeline (streams/app.py)."""

    notify_config: Any = None
    delivery: Any = None

    async def start_notifications(self) -> None:
        """Build the delivery stage when PAGERSTREAM_NOTIFY_CONFIG is set (after Redis is up)."""
        path = os.environ.get("PAGERSTREAM_NOTIFY_CONFIG")
        if not path:
            return
        from pagerstream.notify import templates
        from pagerstream.notify.base import ChannelContext
        from pagerstream.notify.config import load_notify_config
        from pagerstream.notify.delivery import Delivery, RedisRefStore
        from pagerstream.notify.links import ActionLinks, link_keys
        from pagerstream.notify.outbound import outbound_client
        from pagerstream.notify.secrets import SecretStore

        secrets = SecretStore.from_env()
        self.notify_config = load_notify_config(path, secret_names=secrets.names())
        prefix = self.settings.topic_prefix
        public = os.environ.get("PAGERSTREAM_PUBLIC_URL") or f"http://{self.opts.web_host}:{self.opts.web_port}"
        self.action_links = ActionLinks(public.rstrip("/") + "/act", link_keys(), ttl_s=24 * 3600)
        ctx = ChannelContext(http=outbound_client(allowlist=os.environ.get("OUTBOUND_URL_ALLOWLIST")),
                             secret=secrets.get, render=templates.render,
                             refs=RedisRefStore(self.redis, namespace=prefix), action_link=self.action_links)
        self.notify_secrets = secrets
        self.delivery = Delivery(self.redis, ctx, registry=self.metrics.registry, namespace=prefix,
                                 on_attempt=self._notify_attempt, on_dead_letter=self._notify_dead_letter)

    async def stop_notifications(self) -> None:
        if self.delivery is not None:
            await self.delivery.close()
            await self.delivery.ctx.http.aclose()

    def install_notify_routes(self, router: web.UrlDispatcher) -> None:
        """Acting from a message: signed one-click links, Slack buttons, Jira's webhook."""
        router.add_route("*", "/act", self._view_act)
        router.add_post("/slack/interactions", self._view_slack)
        router.add_post("/jira/webhook/{destination}", self._view_jira)

    async def _view_act(self, request: web.Request) -> web.StreamResponse:
        if self.delivery is None or self.redis is None:
            return web.json_response({"error": "notifications are not configured"}, status=404)
        if getattr(self, "_link_handler", None) is None:
            from pagerstream.notify.links import link_handler, link_keys

            self._link_handler = link_handler(keys=link_keys(), redis=self.redis, pagerduty=self.pd_rest)
        return await self._link_handler(request)

    async def _view_slack(self, request: web.Request) -> web.StreamResponse:
        if getattr(self, "_slack_handler", None) is None:
            from pagerstream.notify.slack import act_through_pagerduty, slack_interactions_handler

            secrets = [s for s in os.environ.get("SLACK_SIGNING_SECRETS", "").split(",") if s.strip()]
            if not secrets or self.pd_rest is None:
                return web.json_response({"error": "Slack interactions need SLACK_SIGNING_SECRETS and "
                                                   "PagerDuty REST credentials"}, status=404)
            emails = json.loads(os.environ.get("SLACK_USER_EMAILS", "{}") or "{}")
            in_pagerduty = act_through_pagerduty(self.pd_rest, user_emails=emails)

            async def on_action(action: str, ref: dict[str, str], user: dict[str, Any]) -> Any:
                out = await in_pagerduty(action, ref, user)  # PagerDuty first: it pages people
                if action in ("acknowledge", "resolve"):  # then the pipeline, so every channel follows
                    who = user.get("name") or user.get("username") or user.get("id") or "someone"
                    await self.act_in_pipeline(action, ref.get("incident_id") or "", f"{who} (Slack)", "slack")
                return out

            self._slack_handler = slack_interactions_handler(secrets, on_action)
        return await self._slack_handler(request)

    async def _view_jira(self, request: web.Request) -> web.StreamResponse:
        dest = request.match_info["destination"]
        handlers = self.__dict__.setdefault("_jira_handlers", {})
        if dest not in handlers:
            from pagerstream.notify.jira import jira_webhook_handler

            secret = os.environ.get("JIRA_WEBHOOK_SECRET", "")
            if self.delivery is None or not secret or self.pd_rest is None:
                return web.json_response({"error": "Jira sync is not configured"}, status=404)
            handlers[dest] = jira_webhook_handler(secret=secret, refs=self.delivery.ctx.refs, destination=dest,
                                                  pagerduty=self.pd_rest)
        return await handlers[dest](request)

    def _incident_group_key(self, incident_id: str) -> str:
        return f"pagerstream:{self.settings.topic_prefix}incident-group:{incident_id}"

    async def act_in_pipeline(self, action: str, incident_id: str, by: str, source: str) -> bool:
        """Acknowledge or resolve a whole incident in the pipeline: an incident-level alert to its group
        (processors/incident.py), so its state, PagerDuty and every channel follow in order."""
        from pagerstream.processors.alert import Alert
        from pagerstream.processors.incident import INCIDENT_ACTION_LABEL

        gk = await self.redis.get(self._incident_group_key(incident_id)) if incident_id else None
        if not gk:
            log.warning("%s of incident %s from %s: its group is unknown here", action, incident_id, source)
            return False
        gk = gk.decode() if isinstance(gk, bytes) else gk
        now = int(time.time() * 1000)
        a = Alert(id=f"{source}:{incident_id}:{action}:{now}", raw_id="", source=source, action=action,  # type: ignore[arg-type]
                  routing_key="", dedup_key="", summary=f"{action} by {by}", severity="info", origin=source,
                  event_time=now, received_at=now, group_key=gk, labels={INCIDENT_ACTION_LABEL: incident_id, "by": by})
        fut = await self.normalized_topic.send(key=gk.encode(), value=self.codecs["alert"].encode(a.to_record()))
        await fut
        return True

    # --- agents ------------------------------------------------------------------------------------
    async def _agent_notify(self, stream: faust.StreamT) -> AsyncIterator[None]:
        slots = asyncio.Semaphore(NOTIFY_IN_FLIGHT)
        async for event in stream.noack().events():
            if self.delivery is None:
                event.ack()
                yield None
                continue
            await slots.acquire()
            asyncio.ensure_future(self._notify_event(event, slots))
            yield None

    async def _notify_event(self, event: Any, slots: asyncio.Semaphore) -> None:
        """One incident change: deliver (or park), then ack it so its offset can be committed. A
        change that fails before that is never acked: redelivered after a restart, not lost."""
        try:
            rec = self.codecs["incident_event"].decode(event.value)
            if rec.get("group_key") and rec["change"] == "opened":  # for acting on it from a message
                await self.redis.set(self._incident_group_key(rec["incident_id"]), rec["group_key"],
                                     ex=30 * 86_400)
            if notifiable(rec):
                await self._notify_one(rec, [d.name for d in self.notify_config.route(rec)], 0)
            event.ack()
        except DecodeError as e:
            await self._dead_letter("notify", str(e)[:2000], e, event.message)
            event.ack()
        except Exception as e:
            log.exception("notify stage failed")
            try:
                await self._dead_letter("notify", f"internal error: {e}"[:2000], e, event.message)
                event.ack()
            except Exception:
                log.exception("notify dead letter failed; the change stays unacknowledged")
        finally:
            slots.release()

    async def _agent_notify_retry(self, stream: faust.StreamT) -> AsyncIterator[None]:
        async for event in stream.events():
            if self.delivery is None:
                yield None
                continue
            try:
                r = json.loads(event.value)
                wait = float(r.get("not_before") or 0) - time.time()
                if wait > RETRY_MAX_WAIT_S:  # not due yet: back in the queue, do not hold the partition long
                    await asyncio.sleep(RETRY_MAX_WAIT_S)
                    await self._park_notification(r["incident"], r["destinations"], int(r["attempt"]),
                                                  float(r["not_before"]))
                else:
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await self._notify_one(r["incident"], list(r["destinations"]), int(r["attempt"]) + 1)
            except Exception as e:
                log.exception("notify retry failed")
                await self._dead_letter("notify-retry", str(e)[:2000], e, event.message)
            yield None

    async def _notify_one(self, rec: dict[str, Any], dest_names: list[str], round_: int) -> None:
        from pagerstream.notify.base import Notification
        from pagerstream.notify.config import channel_for
        from pagerstream.notify.delivery import notification_key

        dests = self.notify_config.destinations  # name -> Destination
        futs = {}
        for name in dest_names:
            d = dests.get(name)
            if d is None:  # removed from the configuration since
                continue
            n = Notification(key=notification_key(rec, name), incident=rec, destination=d, attempt=round_)
            futs[name] = self.delivery.submit(n, channel_for(d.channel))
        if not futs:
            return
        await asyncio.wait(list(futs.values()), timeout=NOTIFY_INLINE_S)
        later: list[str] = []
        not_before = 0.0
        for name, f in futs.items():
            if not f.done():
                later.append(name)  # still trying in the background; the retry record is the safety net
                continue
            out = f.result()
            self.metrics.records.labels("notify", out.kind).inc()
            if out.kind == "deferred":
                later.append(name)
                not_before = max(not_before, out.not_before or 0.0)
        if later:
            await self._park_notification(rec, later, round_, not_before or time.time() + 5.0)

    async def _park_notification(self, rec: dict[str, Any], dests: list[str], round_: int, not_before: float) -> None:
        if round_ >= 50:  # about a day of retries: the delivery stage dead-letters long before this
            log.error("notification for %s to %s given up after %d rounds", rec.get("incident_id"), dests, round_)
            return
        body = json.dumps({"incident": rec, "destinations": dests, "attempt": round_, "not_before": not_before},
                          default=str).encode()
        fut = await self.notify_retry_topic.send(key=str(rec["incident_id"]).encode(), value=body)
        await fut  # durable before this change's offset is committed
        self.metrics.records.labels("notify", "parked").inc()

    async def _notify_attempt(self, a: Any) -> None:
        await self.notify_history_topic.send(key=a.incident_id.encode(), value=json.dumps(a.to_dict()).encode())

    async def _notify_dead_letter(self, n: Any, result: Any) -> None:
        from pagerstream.notify.delivery import DeadLetter

        fut = await self.notify_dlq_topic.send(key=n.incident_id.encode(), value=DeadLetter.of(n, result).to_json().encode())
        await fut
