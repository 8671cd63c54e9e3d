"""Channel `servicenow`: one incident record per pagerstream incident (Table API), both ways.

pagerstream -> ServiceNow (`send`):
* first change: find a record with correlation_id = <pagerstream incident id> (so a retry after a lost
  answer does not create a second record), else POST /api/now/table/<table> with short_description
  (template "jira_summary.txt.j2", at most 160 characters), description (template "email.txt.j2":
  plain text; the Jira template is wiki markup, which ServiceNow would show as is), urgency and
  impact (from the severity), correlation_id, correlation_display "pagerstream" and any extra
  `fields` from the config.
  The sys_id goes to ctx.refs, and the reverse (sys_id -> incident id + PagerDuty incident_key) under
  the ref id "servicenow:<sys_id>" for the way back.
* later changes: PATCH /api/now/table/<table>/<sys_id> with work_notes.
* resolve: the same PATCH also sets state "6" (Resolved) with close_code and close_notes, unless the
  record is already Resolved/Closed/Canceled (6/7/8) in ServiceNow, in which case only the work note
  is added.

ServiceNow -> PagerDuty (`ServiceNowResolvedPoller`): polls the table for records pagerstream created
(correlation_display=pagerstream) that are Resolved or Closed and were updated since the last poll,
and resolves the PagerDuty incident through the REST client. Polling needs no inbound connectivity
from the instance; `poll_once()` is the unit a scheduler calls.

Destination config: instance_url (https://<instance>.service-now.com), table (default "incident"),
close_code (default "Solution provided"; older instances use e.g. "Solved (Permanently)"),
close_notes (default text), urgency / impact ({severity: "1".."3"}), fields (extra record fields),
body_template / summary_template (default "email.txt.j2" / "jira_summary.txt.j2"), timeout_s
(default 5, per request), allow_http (default false).
Secret: {"username": ..., "password": ...} (basic auth) or {"access_token": ...} (OAuth bearer).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from pagerstream.notify.base import (
    ChannelContext,
    DeliveryResult,
    Notification,
    RefStore,
    classify_http,
    service_base_url,
)

log = logging.getLogger("pagerstream.notify.servicenow")

kind = "servicenow"
RESOLVED_CHANGES = {"resolved", "auto_resolved"}
REVERSE_PREFIX = "servicenow:"
CORRELATION_DISPLAY = "pagerstream"
BODY_TEMPLATE, SUMMARY_TEMPLATE = "email.txt.j2", "jira_summary.txt.j2"  # plain text, and a one-line title
DONE_STATES = {"6", "7", "8"}  # Resolved, Closed, Canceled
# severity -> (urgency, impact); 1 = High, 2 = Medium, 3 = Low
DEFAULT_LEVELS = {"critical": ("1", "1"), "error": ("2", "2"), "warning": ("2", "3"), "info": ("3", "3")}


class ServiceNowConfigError(ValueError):
    pass


def _auth(creds: dict[str, Any]) -> tuple[httpx.Auth | None, dict[str, str]]:
    if creds.get("access_token"):
        return None, {"Authorization": f"Bearer {creds['access_token']}"}
    if creds.get("username") and creds.get("password"):
        return httpx.BasicAuth(str(creds["username"]), str(creds["password"])), {}
    raise ServiceNowConfigError("ServiceNow secret needs username + password, or access_token")


def _base(cfg: dict[str, Any]) -> str:
    return service_base_url(cfg, "instance_url", ServiceNowConfigError)


class TableApi:
    """Minimal Table API client for one destination (also used by the poller)."""

    def __init__(self, http: httpx.AsyncClient, cfg: dict[str, Any], creds: dict[str, Any]) -> None:
        self.base = _base(cfg)
        self.table = str(cfg.get("table") or "incident")
        if not self.table.replace("_", "").isalnum():
            raise ServiceNowConfigError("table must be a table name")
        self.auth, headers = _auth(creds)
        self.headers = {**headers, "Accept": "application/json"}
        self.http = http
        self.timeout = float(cfg.get("timeout_s", 5))

    async def call(
        self,
        method: str,
        sys_id: str | None = None,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        url = f"{self.base}/api/now/table/{self.table}"
        if sys_id:
            url += "/" + quote(sys_id, safe="")
        kw: dict[str, Any] = {"headers": self.headers, "timeout": self.timeout, "params": params}
        if self.auth is not None:
            kw["auth"] = self.auth
        if body is not None:
            kw["json"] = body
        return await self.http.request(method, url, **kw)


def _levels(cfg: dict[str, Any], severity: str) -> tuple[str, str]:
    u, i = DEFAULT_LEVELS.get(severity, ("3", "3"))
    return str((cfg.get("urgency") or {}).get(severity, u)), str((cfg.get("impact") or {}).get(severity, i))


def _fail(r: httpx.Response, sys_id: str | None = None) -> DeliveryResult:
    res = classify_http(r)
    return DeliveryResult(
        ok=False,
        status=res.status,
        retry_after=res.retry_after,
        permanent=res.permanent,
        answer=res.answer,
        external_ref=sys_id,
    )


async def send(n: Notification, ctx: ChannelContext) -> DeliveryResult:
    cfg = n.destination.config
    dest = n.destination.name
    inc = n.incident
    resolved = inc.get("change") in RESOLVED_CHANGES or inc.get("state") == "resolved"
    try:
        if not n.destination.secret_ref:
            raise ServiceNowConfigError("destination has no secret_ref")
        api = TableApi(ctx.http, cfg, ctx.secret(n.destination.secret_ref))
        text = ctx.render(str(cfg.get("body_template") or BODY_TEMPLATE), n)
        title = " ".join(ctx.render(str(cfg.get("summary_template") or SUMMARY_TEMPLATE), n).split())
    except ServiceNowConfigError as e:
        return DeliveryResult(ok=False, permanent=True, answer=f"servicenow configuration: {e}")
    except Exception as e:
        if type(e).__name__ == "TemplateRenderError":  # pagerstream.notify.templates: the template is wrong
            return DeliveryResult(ok=False, permanent=True, answer=str(e)[:500])
        raise
    close = {
        "state": "6",
        "close_code": str(cfg.get("close_code") or "Solution provided"),
        "close_notes": str(
            cfg.get("close_notes")
            or f"Resolved in pagerstream/PagerDuty: {inc.get('reason') or inc.get('change')}"
        )[:4000],
    }
    try:
        sys_id = await ctx.refs.get(n.incident_id, dest)
        if sys_id is None:  # maybe created before, answer lost: look it up by correlation_id
            r = await api.call(
                "GET",
                params={
                    "sysparm_query": f"correlation_id={n.incident_id}",
                    "sysparm_fields": "sys_id,state",
                    "sysparm_limit": "1",
                },
            )
            if r.status_code != 200:
                return _fail(r)
            found = r.json().get("result") or []
            if found:
                sys_id = str(found[0]["sys_id"])
                await _remember(ctx.refs, dest, sys_id, n)
            else:
                urgency, impact = _levels(cfg, str(inc.get("severity")))
                record: dict[str, Any] = {
                    **{str(k): v for k, v in (cfg.get("fields") or {}).items()},
                    "short_description": (title or f"pagerstream incident {n.incident_id}")[:160],
                    "description": text,
                    "urgency": urgency,
                    "impact": impact,
                    "correlation_id": n.incident_id,
                    "correlation_display": CORRELATION_DISPLAY,
                }
                if resolved:
                    record.update(close)
                r = await api.call("POST", params={"sysparm_fields": "sys_id,number,state"}, body=record)
                if r.status_code != 201:
                    return _fail(r)
                res = r.json()["result"]
                sys_id = str(res["sys_id"])
                await _remember(ctx.refs, dest, sys_id, n)
                return DeliveryResult(
                    ok=True, status=201, answer=f"created {res.get('number', sys_id)}", external_ref=sys_id
                )
        patch: dict[str, Any] = {"work_notes": text}
        if resolved:
            g = await api.call("GET", sys_id, params={"sysparm_fields": "state"})
            if g.status_code != 200:
                return _fail(g, sys_id)
            if str(g.json()["result"].get("state")) not in DONE_STATES:
                patch.update(close)
        r = await api.call("PATCH", sys_id, params={"sysparm_fields": "sys_id,number,state"}, body=patch)
        if r.status_code != 200:
            return _fail(r, sys_id)
        res = r.json()["result"]
        return DeliveryResult(
            ok=True,
            status=200,
            external_ref=sys_id,
            answer=f"updated {res.get('number', sys_id)} (state {res.get('state')})",
        )
    except httpx.TransportError as e:
        what = "timeout" if isinstance(e, httpx.TimeoutException) else "connection error"
        return DeliveryResult(ok=False, permanent=False, answer=f"{what}: {type(e).__name__}")
    except (ValueError, KeyError, TypeError) as e:
        return DeliveryResult(
            ok=False, permanent=False, answer=f"unexpected ServiceNow answer: {type(e).__name__}"
        )


async def _remember(refs: RefStore, dest: str, sys_id: str, n: Notification) -> None:
    await refs.set(
        REVERSE_PREFIX + sys_id,
        dest,
        json.dumps({"incident_id": n.incident_id, "pd_incident_key": n.incident.get("pd_dedup_key")}),
    )
    await refs.set(n.incident_id, dest, sys_id)


class ServiceNowChannel:
    kind = kind

    async def send(self, n: Notification, ctx: ChannelContext) -> DeliveryResult:
        return await send(n, ctx)


# ------------------------------------------------------------------------------------------------
# ServiceNow -> PagerDuty
# ------------------------------------------------------------------------------------------------


class ServiceNowResolvedPoller:
    """Resolve PagerDuty incidents whose ServiceNow record was resolved/closed in ServiceNow.

    The watermark is the largest sys_updated_on seen (ServiceNow's own "YYYY-MM-DD HH:MM:SS" value,
    compared by the instance), so the poller needs no clock agreement with the instance. Records seen
    at the watermark are remembered by (sys_id, sys_updated_on) so the `>=` query does not act twice."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        config: dict[str, Any],
        credentials: dict[str, Any],
        refs: RefStore,
        destination: str,
        pagerduty: Any,
        since: str | None = None,
        page_size: int = 100,
    ) -> None:
        self.api = TableApi(http, config, credentials)
        self.refs = refs
        self.destination = destination
        self.pd = pagerduty
        self.watermark = since
        self.page_size = page_size
        self._seen: set[tuple[str, str]] = set()

    def _query(self) -> str:
        q = f"correlation_display={CORRELATION_DISPLAY}^stateIN6,7"
        if self.watermark:
            q += f"^sys_updated_on>={self.watermark}"
        return q + "^ORDERBYsys_updated_on"

    async def poll_once(self) -> list[dict[str, Any]]:
        """One pass; returns what was done per record. Raises on ServiceNow errors (caller retries)."""
        from pagerstream.notify.links import act_on_pagerduty

        r = await self.api.call(
            "GET",
            params={
                "sysparm_query": self._query(),
                "sysparm_limit": str(self.page_size),
                "sysparm_fields": "sys_id,number,state,correlation_id,sys_updated_on,close_code",
            },
        )
        if r.status_code != 200:
            raise RuntimeError(f"ServiceNow poll -> HTTP {r.status_code}: {r.text[:200]}")
        done: list[dict[str, Any]] = []
        for rec in r.json().get("result") or []:
            sys_id, updated = str(rec.get("sys_id")), str(rec.get("sys_updated_on") or "")
            if (sys_id, updated) in self._seen:
                continue
            raw = await self.refs.get(REVERSE_PREFIX + sys_id, self.destination)
            if not raw:
                self._mark(sys_id, updated)
                continue
            ref = json.loads(raw)
            out = await act_on_pagerduty(
                self.pd,
                ref["pd_incident_key"],
                "resolve",
                resolution=f"Resolved in ServiceNow ({rec.get('number', sys_id)}, "
                f"{rec.get('close_code') or 'no close code'})",
            )
            self._mark(sys_id, updated)
            done.append(
                {
                    "sys_id": sys_id,
                    "number": rec.get("number"),
                    "incident_id": ref.get("incident_id"),
                    "pagerduty": out.status,
                    "pd_incident_id": out.pd_incident_id,
                }
            )
            log.info("servicenow: %s resolved in ServiceNow -> PagerDuty %s", rec.get("number"), out.status)
        return done

    def _mark(self, sys_id: str, updated: str) -> None:
        if updated and (self.watermark is None or updated > self.watermark):
            self.watermark = updated
            self._seen = {x for x in self._seen if x[1] >= updated}
        self._seen.add((sys_id, updated))

    async def run(self, interval_s: float = 60.0, *, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception as e:  # noqa: BLE001 - keep polling; the next pass retries
                log.warning("servicenow poll failed: %s", type(e).__name__)
            await sleep(interval_s)
