"""Microsoft Teams Workflows channel against the Teams stand-in (streams/notify_standins.py).

The stand-in is a real aiohttp server on 127.0.0.1 that checks the workflow URL's signature and the
message + Adaptive Card against a JSON schema written from the Adaptive Card schema explorer, and
records requests. Action links come from a plain function here (the signed link service is another
module's).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from typing import Any

import httpx
import pytest
from aiohttp import web

from pagerstream.notify import teams as teams_mod
from pagerstream.notify import templates
from pagerstream.notify.base import ChannelContext, Destination, Notification
from pagerstream.notify.teams import MAX_MESSAGE_BYTES, TeamsChannel
from pagerstream.streams.notify_standins import make_teams_app, schema_errors, standin_state

WORKFLOW = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
SIG = "WorkflowSIGsecret_0123456789abcdef"
INVOKE = f"/workflows/{WORKFLOW}/triggers/manual/paths/invoke"


def incident(version: int = 1, change: str = "opened", state: str = "triggered", **over: Any) -> dict[str, Any]:
    rec = {
        "event_id": f"inc-7#{version}", "incident_id": "inc-7", "version": version, "change": change,
        "reason": f"change {change}", "state": state, "alert_id": None, "dedup_key": None,
        "pd_dedup_key": "pdkey-inc-7", "routing_key_hint": "WXYZ", "service": "checkout", "team": "web",
        "tier": None, "runbook_url": "https://runbooks.example.com/checkout/latency",
        "summary": "checkout p99 latency above 2s", "severity": "error", "open_alerts": 2, "total_alerts": 2,
        "duplicates": 1, "opened_at": 1714564800000, "acknowledged_at": None, "resolved_at": None,
        "at": 1714564800000 + version * 60_000, "pagerduty_action": None, "change_detail": None, "alert_type": None,
        "pause": None,
        "scores": [{"model": "classify.category", "label": "latency", "best": "latency", "score": 0.78,
                    "abstained": False, "explanation": "words: p99, latency", "model_version": "c1"},
                   {"model": "transient", "label": None, "best": "transient", "score": 0.35, "abstained": True,
                    "explanation": "3 of 9 episodes cleared", "model_version": "t2"}],
        "similar": [{"incident_id": "old-3", "summary": "checkout slow after cache flush", "service": "checkout",
                     "resolved_at": 1714000000000, "score": 0.72, "why": "same service, similar words"}],
        "recurrence": None,
    }
    rec.update(over)
    return rec


def link(incident_id: str, action: str) -> str:
    return f"https://pagerstream.example.com/a/{incident_id}/{action}?t=signed"


@contextlib.asynccontextmanager
async def serve(app: web.Application):
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class NoRefs:
    async def get(self, incident_id: str, destination: str) -> str | None:
        raise AssertionError("the Teams channel keeps no refs")

    async def set(self, incident_id: str, destination: str, ref: str) -> None:
        raise AssertionError("the Teams channel keeps no refs")


@contextlib.asynccontextmanager
async def teams_env(*, sig: str = SIG, action_link=link, timeout: float = 5.0):
    app = make_teams_app(workflows={WORKFLOW: SIG})
    async with serve(app) as url, httpx.AsyncClient(timeout=timeout) as http:
        wf_url = f"{url}{INVOKE}?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={sig}"
        ctx = ChannelContext(http=http, secret=lambda ref: {"url": wf_url}, render=templates.render, refs=NoRefs(),
                             action_link=action_link)
        yield standin_state(app), ctx


DEST = Destination(name="teams-web", channel="teams", secret_ref="teams-web")


def note(rec: dict[str, Any], dest: Destination = DEST) -> Notification:
    return Notification(key=f"{rec['incident_id']}#{rec['version']}@{dest.name}", incident=rec, destination=dest)


def card_of(entry: dict[str, Any]) -> dict[str, Any]:
    [att] = entry["body"]["attachments"]
    assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
    return att["content"]


def actions(card: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["title"], a["url"]) for a in card.get("actions") or []]


async def test_open_incident_card_is_accepted_with_action_links():
    async with teams_env() as (state, ctx):
        r = await TeamsChannel().send(note(incident()), ctx)
        assert r.ok and r.status == 202, r
        [entry] = state.requests
        assert entry["status"] == 202 and entry["errors"] == []
        assert schema_errors("teams", entry["body"]) == []
        card = card_of(entry)
        assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
        assert actions(card) == [("Acknowledge", link("inc-7", "acknowledge")), ("Resolve", link("inc-7", "resolve")),
                                 ("Runbook", "https://runbooks.example.com/checkout/latency")]
        text = json.dumps(card)
        for expected in ("checkout p99 latency above 2s", "error", "high", "checkout", "web", "classify.category",
                         "latency 78%", "words: p99, latency", "transient?", "checkout slow after cache flush",
                         "old-3", "same service, similar words"):
            assert expected in text, expected


@pytest.mark.parametrize("rec,expected", [
    (incident(2, "acknowledged", "acknowledged"), ["Resolve", "Runbook"]),
    (incident(3, "resolved", "resolved"), ["Runbook"]),
    (incident(2, "dropped", "resolved"), ["Runbook"]),
    (incident(1, change_detail="paused"), ["Runbook"]),
    (incident(1, runbook_url=None), ["Acknowledge", "Resolve"]),
])
async def test_action_links_only_while_open(rec, expected):
    async with teams_env() as (state, ctx):
        assert (await TeamsChannel().send(note(rec), ctx)).ok
        assert [t for t, _ in actions(card_of(state.requests[-1]))] == expected


async def test_without_action_link_service_no_act_buttons():
    async with teams_env(action_link=None) as (state, ctx):
        assert (await TeamsChannel().send(note(incident()), ctx)).ok
        assert [t for t, _ in actions(card_of(state.requests[-1]))] == ["Runbook"]


async def test_every_change_is_a_new_card():
    async with teams_env() as (state, ctx):
        for rec in (incident(1), incident(2, "acknowledged", "acknowledged"), incident(3, "resolved", "resolved")):
            assert (await TeamsChannel().send(note(rec), ctx)).ok
        assert len(state.messages[f"teams:{WORKFLOW}"]) == 3


@pytest.mark.parametrize("sig", ["wrongSIG", ""])
async def test_bad_signature_is_permanent_and_not_leaked(sig, caplog):
    caplog.set_level(logging.DEBUG)
    async with teams_env(sig=sig) as (state, ctx):
        r = await TeamsChannel().send(note(incident()), ctx)
        assert not r.ok and r.permanent and r.status == 401
        assert state.requests[-1]["query"].get("sig") in ("****", None)
    r_ok_text = caplog.text
    assert SIG not in r_ok_text and (not sig or sig not in r_ok_text)


async def test_good_signature_never_appears_in_logs_or_results(caplog):
    caplog.set_level(logging.DEBUG)
    async with teams_env() as (state, ctx):
        r = await TeamsChannel().send(note(incident()), ctx)
        assert r.ok
        assert "sig=****" in caplog.text  # httpx logged the request URL, masked
        assert SIG not in caplog.text and SIG not in r.answer and SIG not in json.dumps(state.requests)


async def test_throttling_and_outages_are_transient():
    async with teams_env() as (state, ctx):
        state.faults.append({"mode": "429", "count": 1, "kind": "teams", "retry_after": 12})
        r = await TeamsChannel().send(note(incident()), ctx)
        assert not r.ok and not r.permanent and r.status == 429 and r.retry_after == 12.0
        state.faults.append({"mode": "500", "count": 1, "kind": "teams", "retry_after": 1})
        r = await TeamsChannel().send(note(incident()), ctx)
        assert not r.ok and not r.permanent and r.status == 500
        assert (await TeamsChannel().send(note(incident()), ctx)).ok


async def test_hanging_workflow_is_a_transient_timeout():
    async with teams_env(timeout=0.3) as (state, ctx):
        state.faults.append({"mode": "hang", "count": 1, "kind": "teams", "retry_after": 1})
        r = await TeamsChannel().send(note(incident()), ctx)
        assert not r.ok and not r.permanent and "timeout" in r.answer
        state.release.set()


async def test_huge_texts_are_clipped_to_fit_the_teams_limit():
    big = incident(summary="S" * 60_000, scores=[dict(incident()["scores"][0], explanation="E" * 20_000)] * 3)
    async with teams_env() as (state, ctx):
        r = await TeamsChannel().send(note(big), ctx)
        assert r.ok, r
        entry = state.requests[-1]
        assert len(json.dumps(entry["body"], ensure_ascii=False).encode()) <= MAX_MESSAGE_BYTES
        assert [t for t, _ in actions(card_of(entry))] == ["Acknowledge", "Resolve", "Runbook"]


async def test_template_producing_a_non_card_is_permanent_without_a_request():
    async with teams_env() as (state, ctx):
        dest = Destination(name="t", channel="teams", secret_ref="x", config={"template": {"inline": '{"type": "Nope"}'}})
        r = await TeamsChannel().send(note(incident(), dest), ctx)
        assert not r.ok and r.permanent and "AdaptiveCard" in r.answer
        assert state.requests == []


def _valid_payload() -> dict[str, Any]:
    return teams_mod.build_payload(note(incident()), templates.render, link)


@pytest.mark.parametrize("mutate,where", [
    (lambda p: p["attachments"][0].__setitem__("contentType", "application/vnd.microsoft.card.hero"), "contentType"),
    (lambda p: p.__setitem__("type", "note"), "type"),
    (lambda p: p.__setitem__("attachments", []), "attachments"),
    (lambda p: p["attachments"][0]["content"].__setitem__("version", "2.0"), "version"),
    (lambda p: p["attachments"][0]["content"].pop("version"), "version"),
    (lambda p: p["attachments"][0]["content"]["body"][0].pop("text"), "body/0"),
    (lambda p: p["attachments"][0]["content"]["body"][1]["facts"][0].pop("value"), "body/1"),
    (lambda p: p["attachments"][0]["content"]["actions"].append({"type": "Action.Submit", "title": "Ack"}), "actions/3"),
    (lambda p: p["attachments"][0]["content"]["actions"][0].pop("url"), "actions/0"),
    (lambda p: p["attachments"][0]["content"]["actions"][0].__setitem__("url", "javascript:alert(1)"), "actions/0"),
    (lambda p: p["attachments"][0]["content"]["body"].append({"type": "Marquee", "text": "x"}), "body/"),
])
async def test_standin_rejects_invalid_cards(mutate, where):
    payload = _valid_payload()
    assert schema_errors("teams", payload) == []
    bad = copy.deepcopy(payload)
    mutate(bad)
    errors = schema_errors("teams", bad)
    assert errors and any(where in e for e in errors), errors
    async with serve(make_teams_app(workflows={WORKFLOW: SIG})) as url, httpx.AsyncClient() as c:
        r = await c.post(f"{url}{INVOKE}?api-version=1&sp=x&sv=1.0&sig={SIG}", json=bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidAdaptiveCard"
        ok = await c.post(f"{url}{INVOKE}?api-version=1&sp=x&sv=1.0&sig={SIG}", json=payload)
        assert ok.status_code == 202


async def test_standin_checks_the_request_envelope():
    async with serve(make_teams_app(workflows={WORKFLOW: SIG})) as url, httpx.AsyncClient() as c:
        base = f"{url}{INVOKE}"
        payload = _valid_payload()
        assert (await c.post(f"{base}?api-version=1&sp=x&sv=1.0", json=payload)).status_code == 401
        assert (await c.post(f"{base}?sig={SIG}", json=payload)).status_code == 400
        r = await c.post(f"{base}?api-version=1&sp=x&sv=1.0&sig={SIG}", content=json.dumps(payload),
                         headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        big = copy.deepcopy(payload)
        big["attachments"][0]["content"]["body"][0]["text"] = "x" * (MAX_MESSAGE_BYTES + 1)
        assert (await c.post(f"{base}?api-version=1&sp=x&sv=1.0&sig={SIG}", json=big)).status_code == 413


async def test_link_maker_taking_the_pagerduty_key_gets_it():
    seen: list[tuple] = []

    def three(incident_id: str, action: str, pd_incident_key: str | None = None) -> str:
        seen.append((incident_id, action, pd_incident_key))
        return f"https://pagerstream.example.com/act?i={incident_id}&a={action}"

    async with teams_env(action_link=three) as (state, ctx):
        assert (await TeamsChannel().send(note(incident()), ctx)).ok
    assert seen == [("inc-7", "acknowledge", "pdkey-inc-7"), ("inc-7", "resolve", "pdkey-inc-7")]


def test_config_validation():
    assert teams_mod.validate_config({"template": {"inline": "{}"}}) == []
    problems = teams_mod.validate_config({"url": "https://x/invoke?sig=abc", "template": {"file": "x"}})
    assert problems[0].startswith("template:") and any(p.startswith("url:") for p in problems)
    assert "abc" not in " ".join(problems)
