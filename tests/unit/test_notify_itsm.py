"""Channels `jira` and `servicenow` against the local stand-ins (streams/itsm_standins.py, real aiohttp
servers on 127.0.0.1 that check the documented request shapes), and the way back (Jira webhook /
ServiceNow poll -> PagerDuty resolve) against the PagerDuty REST sandbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random

import httpx
import pytest
from aiohttp import web
from pagerstream.streams import pd_sandbox
from pagerstream.streams.itsm_standins import (
    StandinServer,
    adf_problems,
    jira_state,
    make_jira_app,
    make_servicenow_app,
    servicenow_state,
)
from pagerstream.streams.pd_rest_sandbox import rest_state

from pagerstream.notify import jira, servicenow
from pagerstream.notify.base import ChannelContext, Destination, Notification
from pagerstream.notify.jira import adf_from_text, jira_webhook_handler
from pagerstream.notify.servicenow import ServiceNowResolvedPoller
from pagerstream.pagerduty.rest import PagerDutyREST

JIRA_EMAIL, JIRA_TOKEN = "bot@example.com", "ATATT-jira-token-123"
SN_USER, SN_PASSWORD = "pagerstream.integration", "sn-password-456"
PD_KEY = "u+pagerstreamTESTkey_0123456789-abc"
PD_EMAIL = "oncall.bot@example.com"
HOOK_SECRET = "jira-hook-secret-789"


class DictRefs:
    def __init__(self) -> None:
        self.d: dict[tuple[str, str], str] = {}

    async def get(self, incident_id, destination):
        return self.d.get((incident_id, destination))

    async def set(self, incident_id, destination, ref):
        self.d[(incident_id, destination)] = ref


SECRETS = {
    "jira-cred": {"email": JIRA_EMAIL, "api_token": JIRA_TOKEN},
    "jira-oauth": {"access_token": "oauth-bearer-1"},
    "sn-cred": {"username": SN_USER, "password": SN_PASSWORD},
    "jira-bad": {"email": JIRA_EMAIL, "api_token": "wrong"},
}


def render(name: str, n: Notification) -> str:
    """A stand-in for pagerstream.notify.templates.render with the same template names."""
    inc = n.incident
    if name == "jira_summary.txt.j2":
        return f"[{inc['severity'].upper()}] {inc['summary']}\n"
    if name in ("jira.txt.j2", "email.txt.j2"):
        return (
            f"{inc['summary']}\nchange: {inc['change']} -> {inc['state']}\n\n"
            f"Runbook: https://runbooks.example.com/payments.\n"
        )
    raise KeyError(name)


def incident(iid="abc123-1", version=1, change="opened", state="triggered", severity="critical") -> dict:
    return {
        "event_id": f"{iid}#{version}",
        "incident_id": iid,
        "version": version,
        "change": change,
        "reason": "error rate back to normal" if state == "resolved" else "new alert",
        "state": state,
        "pd_dedup_key": f"pagerstream-{iid}",
        "routing_key_hint": "000A",
        "summary": "payments-api 5xx",
        "severity": severity,
        "open_alerts": 1,
        "total_alerts": 1,
        "duplicates": 0,
        "opened_at": 1,
        "at": version,
    }


def note(d: Destination, **kw) -> Notification:
    inc = incident(**kw)
    return Notification(key=f"{inc['incident_id']}#{inc['version']}@{d.name}", incident=inc, destination=d)


class Env:
    pass


def run(scenario):
    async def main():
        env = Env()
        env.jira_app, env.sn_app = (
            make_jira_app(email=JIRA_EMAIL, api_token=JIRA_TOKEN, bearer_tokens=("oauth-bearer-1",)),
            make_servicenow_app(username=SN_USER, password=SN_PASSWORD, bearer_tokens=("sn-oauth-1",)),
        )
        env.jira, env.sn = jira_state(env.jira_app), servicenow_state(env.sn_app)
        env.refs = DictRefs()
        async with (
            StandinServer(env.jira_app) as js,
            StandinServer(env.sn_app) as ss,
            pd_sandbox.SandboxServer(host="127.0.0.1", port=0) as pds,
            httpx.AsyncClient() as http,
        ):
            env.pd_state = rest_state(pds.app)
            env.pd_state.seed(
                {
                    "users": [{"id": "PBOT001", "name": "Oncall Bot", "email": PD_EMAIL}],
                    "services": [{"id": "PSVC001", "name": "payments-api"}],
                    "incidents": [
                        {
                            "id": "PINC001",
                            "title": "payments 5xx",
                            "service_id": "PSVC001",
                            "incident_key": "pagerstream-abc123-1",
                        },
                        {
                            "id": "PINC002",
                            "title": "db slow",
                            "service_id": "PSVC001",
                            "incident_key": "pagerstream-def456-1",
                        },
                    ],
                }
            )
            env.pd = PagerDutyREST(
                base_url=pds.url,
                allow_private=True,
                api_key=PD_KEY,
                from_email=PD_EMAIL,
                rng=random.Random(3),
            )
            env.http = http
            env.ctx = ChannelContext(http=http, secret=lambda ref: SECRETS[ref], render=render, refs=env.refs)
            env.jira_dest = Destination(
                name="jira-ops",
                channel="jira",
                secret_ref="jira-cred",
                config={
                    "base_url": js.url,
                    "project": "OPS",
                    "issue_type": "Task",
                    "done_transition": "Done",
                    "allow_http": True,
                    "labels": ["payments"],
                    "timeout_s": 5,
                },
            )
            env.sn_dest = Destination(
                name="snow",
                channel="servicenow",
                secret_ref="sn-cred",
                config={
                    "instance_url": ss.url,
                    "allow_http": True,
                    "close_code": "Solution provided",
                    "timeout_s": 5,
                    "fields": {"category": "software"},
                },
            )
            hook_app = web.Application()
            hook_app.router.add_post(
                "/hooks/jira",
                jira_webhook_handler(
                    secret=HOOK_SECRET, refs=env.refs, destination="jira-ops", pagerduty=env.pd
                ),
            )
            async with StandinServer(hook_app) as hs:
                env.hook_url = hs.url + "/hooks/jira"
                try:
                    return await scenario(env)
                finally:
                    await env.pd.aclose()

    return asyncio.run(main())


def pd_status(env, iid="PINC001"):
    return env.pd_state.collections["incidents"][iid]["status"]


# ------------------------------------------------------------------------------------------------
# Jira
# ------------------------------------------------------------------------------------------------


def test_adf_from_text_is_valid_adf():
    doc = adf_from_text("line one\nline two see https://x.example/a?b=1.\n\n\n\nsecond para\n")
    assert adf_problems(doc) == []
    p1, p2 = doc["content"]
    assert [n["type"] for n in p1["content"]] == ["text", "hardBreak", "text", "text", "text"]
    assert p1["content"][3]["marks"] == [{"type": "link", "attrs": {"href": "https://x.example/a?b=1"}}]
    assert p2["content"] == [{"type": "text", "text": "second para"}]
    assert adf_problems(adf_from_text("")) == []
    assert adf_problems(
        {
            "type": "doc",
            "version": 1,
            "content": [{"type": "paragraph", "content": [{"type": "text", "text": ""}]}],
        }
    )  # empty text nodes are invalid ADF
    assert adf_problems("plain string")


def test_adf_from_the_default_jira_template_is_valid():
    from pagerstream.notify.templates import render as real_render

    inc = {
        **incident(),
        "reason": "5xx > 5% for 5m",
        "runbook_url": "https://runbooks.example.com/p",
        "scores": [
            {
                "model": "classify.category",
                "label": "network",
                "best": "network",
                "score": 0.93,
                "explanation": "words: timeout",
            }
        ],
    }
    n = Notification(key="k", incident=inc, destination=Destination(name="j", channel="jira"))
    doc = adf_from_text(real_render("jira.txt.j2", n))
    assert adf_problems(doc) == []
    assert doc["content"][0]["type"] == "heading"
    flat = json.dumps(doc)
    assert "h3." not in flat and "||" not in flat
    assert '"href": "https://runbooks.example.com/p"' in flat and '"type": "bulletList"' in flat


def test_jira_issue_then_comment_then_done_transition():
    async def scenario(env):
        d = env.jira_dest
        r = await jira.send(note(d), env.ctx)
        assert r.ok and r.status == 201 and r.external_ref == "OPS-1", r
        issue = env.jira.issues["OPS-1"]
        assert issue["summary"] == "[CRITICAL] payments-api 5xx (abc123-1)"
        assert issue["issuetype"] == "Task" and issue["labels"] == ["pagerstream", "payments"]
        assert adf_problems(issue["description"]) == []
        assert issue["description"]["content"][0]["content"][0]["text"] == "payments-api 5xx"
        assert env.refs.d[("abc123-1", "jira-ops")] == "OPS-1"
        assert json.loads(env.refs.d[("jira-issue:OPS-1", "jira-ops")]) == {
            "incident_id": "abc123-1",
            "pd_incident_key": "pagerstream-abc123-1",
        }

        r = await jira.send(note(d, version=2, change="acknowledged", state="acknowledged"), env.ctx)
        assert r.ok and r.external_ref == "OPS-1", r
        assert len(issue["comments"]) == 1 and "acknowledged" in json.dumps(issue["comments"][0]["body"])
        assert issue["status"] == "To Do"

        r = await jira.send(note(d, version=3, change="resolved", state="resolved"), env.ctx)
        assert r.ok, r
        assert issue["status"] == "Done" and issue["transitions_done"] == ["31"]
        assert len(issue["comments"]) == 2
        calls = [(q["method"], q["path"]) for q in env.jira.requests]
        assert calls == [
            ("POST", "/rest/api/3/issue"),
            ("POST", "/rest/api/3/issue/OPS-1/comment"),
            ("GET", "/rest/api/3/issue/OPS-1/transitions"),
            ("POST", "/rest/api/3/issue/OPS-1/transitions"),
            ("POST", "/rest/api/3/issue/OPS-1/comment"),
        ]
        assert {q["auth"] for q in env.jira.requests} == {f"basic {JIRA_EMAIL}:***"}
        assert all(q["status"] in (200, 201, 204) for q in env.jira.requests)

        # a replay of the resolve finds the issue already done: no second transition
        r = await jira.send(note(d, version=3, change="resolved", state="resolved"), env.ctx)
        assert r.ok and issue["transitions_done"] == ["31"], r

    run(scenario)


def test_jira_oauth_bearer_and_resolve_as_first_change():
    async def scenario(env):
        d = Destination(
            name="jira-oauth", channel="jira", secret_ref="jira-oauth", config=env.jira_dest.config
        )
        r = await jira.send(note(d, iid="zzz-9", version=4, change="resolved", state="resolved"), env.ctx)
        assert r.ok, r
        assert env.jira.issues["OPS-1"]["status"] == "Done"
        assert env.jira.requests[0]["auth"] == "bearer ***"

    run(scenario)


def test_jira_standin_checks_documented_shapes():
    async def scenario(env):
        base = env.jira_dest.config["base_url"]
        auth = (JIRA_EMAIL, JIRA_TOKEN)
        ok_fields = {
            "project": {"key": "OPS"},
            "summary": "s",
            "issuetype": {"name": "Task"},
            "description": adf_from_text("hello"),
        }
        r = await env.http.post(f"{base}/rest/api/3/issue", json={"fields": ok_fields}, auth=("x", "y"))
        assert r.status_code == 401
        for bad, field in (
            ({"description": "plain text"}, "description"),
            ({"summary": "a\nb"}, "summary"),
            ({"summary": ""}, "summary"),
            ({"issuetype": {"name": "Epic"}}, "issuetype"),
            ({"project": {"key": "NOPE"}}, "project"),
            ({"labels": ["has space"]}, "labels"),
        ):
            r = await env.http.post(
                f"{base}/rest/api/3/issue", json={"fields": {**ok_fields, **bad}}, auth=auth
            )
            assert r.status_code == 400 and field in r.json()["errors"], (bad, r.text)
        r = await env.http.post(
            f"{base}/rest/api/3/issue", content=b"{}", auth=auth, headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 415
        r = await env.http.post(f"{base}/rest/api/3/issue", json={"fields": ok_fields}, auth=auth)
        assert r.status_code == 201
        key = r.json()["key"]
        r = await env.http.post(f"{base}/rest/api/3/issue/{key}/comment", json={"body": "text"}, auth=auth)
        assert r.status_code == 400
        r = await env.http.post(
            f"{base}/rest/api/3/issue/{key}/transitions", json={"transition": {"id": "11"}}, auth=auth
        )  # Reopen: not from To Do
        assert r.status_code == 400 and "not valid" in r.json()["errorMessages"][0]
        assert env.jira.issues[key]["status"] == "To Do"
        assert env.jira.issues[key]["comments"] == []

    run(scenario)


def test_jira_missing_done_transition_is_permanent():
    async def scenario(env):
        d = Destination(
            name="jira-ops",
            channel="jira",
            secret_ref="jira-cred",
            config={**env.jira_dest.config, "done_transition": "Close Issue"},
        )
        assert (await jira.send(note(d), env.ctx)).ok
        r = await jira.send(note(d, version=2, change="resolved", state="resolved"), env.ctx)
        assert not r.ok and r.permanent and "'Done'" in r.answer and "Close Issue" in r.answer, r
        assert env.jira.issues["OPS-1"]["status"] == "To Do"

    run(scenario)


@pytest.mark.parametrize(
    "fault, expect",
    [
        ({"status": 429, "retry_after": "7"}, {"status": 429, "retry_after": 7.0, "permanent": False}),
        ({"status": 500}, {"status": 500, "permanent": False}),
        ({"status": 403}, {"status": 403, "permanent": True}),
        ({"hang": True}, {"status": None, "permanent": False}),
    ],
)
def test_jira_faults_map_to_results(fault, expect):
    async def scenario(env):
        d = Destination(
            name="jira-ops",
            channel="jira",
            secret_ref="jira-cred",
            config={**env.jira_dest.config, "timeout_s": 0.5},
        )
        env.jira.add_fault(path="/rest/api/3/issue", **fault)
        r = await jira.send(note(d), env.ctx)
        assert not r.ok
        for k, v in expect.items():
            assert getattr(r, k) == v, (k, r)
        assert env.jira.issues == {} and ("abc123-1", "jira-ops") not in env.refs.d
        r = await jira.send(note(d), env.ctx)  # fault gone: the retry creates the issue
        assert r.ok and list(env.jira.issues) == ["OPS-1"]

    run(scenario)


def test_jira_bad_credentials_are_permanent():
    async def scenario(env):
        d = Destination(name="jira-ops", channel="jira", secret_ref="jira-bad", config=env.jira_dest.config)
        r = await jira.send(note(d), env.ctx)
        assert not r.ok and r.permanent and r.status == 401
        assert "wrong" not in r.answer

    run(scenario)


def test_jira_done_webhook_resolves_pagerduty():
    async def scenario(env):
        assert (await jira.send(note(env.jira_dest), env.ctx)).ok
        payload = env.jira.move("OPS-1", "Done")
        body = json.dumps(payload).encode()
        # wrong / missing secret: refused, nothing changes
        for params, headers in (
            ({"token": "nope"}, {}),
            ({}, {}),
            ({}, {"X-Hub-Signature": "sha256=" + "0" * 64}),
        ):
            r = await env.http.post(env.hook_url, params=params, content=body, headers=headers)
            assert r.status_code == 401
        assert pd_status(env) == "triggered"
        # a status change that is not "done" is ignored
        other = env.jira.move("OPS-1", "In Progress")
        r = await env.http.post(env.hook_url, params={"token": HOOK_SECRET}, json=other)
        assert r.status_code == 202 and pd_status(env) == "triggered"
        # the real thing: Jira's admin-webhook signature over the raw body
        sig = hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        r = await env.http.post(
            env.hook_url,
            content=body,
            headers={"X-Hub-Signature": f"sha256={sig}", "Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["pagerduty"] == "done" and r.json()["incident_id"] == "abc123-1"
        assert pd_status(env) == "resolved"
        puts = env.pd_state.find_requests(method="PUT")
        assert len(puts) == 1 and puts[0]["body"]["incident"]["status"] == "resolved"
        assert "OPS-1" in puts[0]["body"]["incident"]["resolution"]
        # redelivery: nothing more to do
        r = await env.http.post(env.hook_url, params={"token": HOOK_SECRET}, content=body)
        assert r.status_code == 200 and r.json()["pagerduty"] == "already"
        assert len(env.pd_state.find_requests(method="PUT")) == 1

    run(scenario)


def test_jira_webhook_ignores_foreign_issues_and_other_events():
    async def scenario(env):
        assert (await jira.send(note(env.jira_dest), env.ctx)).ok
        payload = env.jira.move("OPS-1", "Done")
        foreign = json.loads(json.dumps(payload))
        foreign["issue"]["key"] = "OPS-999"
        r = await env.http.post(env.hook_url, params={"token": HOOK_SECRET}, json=foreign)
        assert r.status_code == 202 and "not an issue pagerstream created" in r.text
        r = await env.http.post(
            env.hook_url, params={"token": HOOK_SECRET}, json={**payload, "webhookEvent": "comment_created"}
        )
        assert r.status_code == 202
        r = await env.http.post(env.hook_url, params={"token": HOOK_SECRET}, content=b"[1,2]")
        assert r.status_code == 400
        assert pd_status(env) == "triggered"

    run(scenario)


# ------------------------------------------------------------------------------------------------
# ServiceNow
# ------------------------------------------------------------------------------------------------


def test_servicenow_create_then_work_notes_then_resolve():
    async def scenario(env):
        d = env.sn_dest
        r = await servicenow.send(note(d), env.ctx)
        assert r.ok and r.status == 201, r
        sys_id = r.external_ref
        rec = env.sn.records[sys_id]
        assert rec["correlation_id"] == "abc123-1" and rec["correlation_display"] == "pagerstream"
        assert (rec["urgency"], rec["impact"], rec["state"]) == ("1", "1", "1")
        assert rec["short_description"] == "[CRITICAL] payments-api 5xx" and rec["category"] == "software"
        assert "payments-api 5xx" in rec["description"]
        assert env.refs.d[("abc123-1", "snow")] == sys_id
        assert (
            json.loads(env.refs.d[(f"servicenow:{sys_id}", "snow")])["pd_incident_key"]
            == "pagerstream-abc123-1"
        )

        r = await servicenow.send(note(d, version=2, change="acknowledged", state="acknowledged"), env.ctx)
        assert r.ok and r.external_ref == sys_id, r
        assert [j["field"] for j in env.sn.journal[sys_id]] == ["work_notes"]
        assert rec["state"] == "1"

        r = await servicenow.send(note(d, version=3, change="resolved", state="resolved"), env.ctx)
        assert r.ok, r
        assert rec["state"] == "6" and rec["close_code"] == "Solution provided"
        assert "error rate back to normal" in rec["close_notes"]
        assert len(env.sn.journal[sys_id]) == 2
        patches = [q for q in env.sn.requests if q["method"] == "PATCH"]
        assert len(patches) == 2 and patches[1]["body"]["state"] == "6"
        assert {q["auth"] for q in env.sn.requests} == {f"basic {SN_USER}:***"}

        # refs lost (or the create's answer lost): found again by correlation_id, no second record
        env.refs.d.clear()
        r = await servicenow.send(note(d, version=4, change="alert_added", state="resolved"), env.ctx)
        assert r.ok and r.external_ref == sys_id and len(env.sn.records) == 1, r

    run(scenario)


def test_servicenow_standin_checks_documented_shapes():
    async def scenario(env):
        url = env.sn_dest.config["instance_url"] + "/api/now/table/incident"
        auth = (SN_USER, SN_PASSWORD)
        assert (await env.http.post(url, json={"short_description": "x"})).status_code == 401
        r = await env.http.post(
            url, json={"short_description": "x"}, headers={"Authorization": "Bearer sn-oauth-1"}
        )
        assert r.status_code == 201 and len(r.json()["result"]["sys_id"]) == 32
        sys_id = r.json()["result"]["sys_id"]
        for body in (
            {"short_description": "x", "urgency": "9"},
            {"short_description": "x", "no_such_field": 1},
            {"description": "no short description"},
        ):
            r = await env.http.post(url, json=body, auth=auth)
            assert r.status_code == 400 and r.json()["status"] == "failure", body
        r = await env.http.patch(f"{url}/{sys_id}", json={"state": "6"}, auth=auth)
        assert r.status_code == 400 and "close_code" in r.json()["error"]["detail"]
        assert env.sn.records[sys_id]["state"] == "1"
        r = await env.http.patch(f"{url}/{'0' * 32}", json={"work_notes": "x"}, auth=auth)
        assert r.status_code == 404 and r.json()["error"]["message"] == "No Record found"

    run(scenario)


@pytest.mark.parametrize(
    "fault, expect",
    [
        ({"status": 429, "retry_after": "12"}, {"status": 429, "retry_after": 12.0, "permanent": False}),
        ({"status": 500}, {"status": 500, "permanent": False}),
        ({"hang": True}, {"status": None, "permanent": False}),
    ],
)
def test_servicenow_faults_map_to_results(fault, expect):
    async def scenario(env):
        d = Destination(
            name="snow",
            channel="servicenow",
            secret_ref="sn-cred",
            config={**env.sn_dest.config, "timeout_s": 0.5},
        )
        env.sn.add_fault(method="POST", **fault)
        r = await servicenow.send(note(d), env.ctx)
        assert not r.ok
        for k, v in expect.items():
            assert getattr(r, k) == v, (k, r)
        assert env.sn.records == {}

    run(scenario)


def test_resolved_in_servicenow_resolves_pagerduty():
    async def scenario(env):
        d = env.sn_dest
        sys1 = (await servicenow.send(note(d), env.ctx)).external_ref
        sys2 = (await servicenow.send(note(d, iid="def456-1"), env.ctx)).external_ref
        poller = ServiceNowResolvedPoller(
            http=env.http,
            config=d.config,
            credentials=SECRETS["sn-cred"],
            refs=env.refs,
            destination="snow",
            pagerduty=env.pd,
        )
        assert await poller.poll_once() == []
        env.sn.resolve_as_user(sys1, close_code="Solution provided", close_notes="restarted the pods")
        done = await poller.poll_once()
        assert [(x["sys_id"], x["pagerduty"]) for x in done] == [(sys1, "done")]
        assert pd_status(env, "PINC001") == "resolved" and pd_status(env, "PINC002") == "triggered"
        assert await poller.poll_once() == []  # nothing new: no second PagerDuty call
        assert len(env.pd_state.find_requests(method="PUT")) == 1
        q = [r for r in env.sn.requests if r["method"] == "GET" and "sysparm_query" in r["query"]][-1]
        assert q["query"]["sysparm_query"].startswith("correlation_display=pagerstream^stateIN6,7")

        # the resolve comes back through the stream: the record is already resolved, so only a work note
        r = await servicenow.send(note(d, version=2, change="resolved", state="resolved"), env.ctx)
        assert r.ok, r
        assert env.sn.records[sys1]["close_notes"] == "restarted the pods"
        assert [q["body"] for q in env.sn.requests if q["method"] == "PATCH"][-1].keys() == {"work_notes"}

        env.sn.resolve_as_user(sys2, state="7")
        done = await poller.poll_once()
        assert [(x["sys_id"], x["pagerduty"]) for x in done] == [(sys2, "done")]
        assert pd_status(env, "PINC002") == "resolved"

    run(scenario)


def test_template_errors_are_permanent_for_both_channels():
    from pagerstream.notify.templates import render as real_render

    async def scenario(env):
        env.ctx.render = real_render
        bad = {"templates": {"jira_summary.txt.j2": {"inline": "{{ incident.__class__ }}"}}}
        for mod, d in ((jira, env.jira_dest), (servicenow, env.sn_dest)):
            d2 = Destination(
                name=d.name, channel=d.channel, secret_ref=d.secret_ref, config={**d.config, **bad}
            )
            r = await mod.send(note(d2), env.ctx)
            assert not r.ok and r.permanent and "jira_summary.txt.j2" in r.answer, r
        assert env.jira.requests == [] and env.sn.requests == []
        # and with the real templates the ServiceNow record gets the plain-text body and the one-line title
        r = await servicenow.send(note(env.sn_dest), env.ctx)
        assert r.ok, r
        rec = env.sn.records[r.external_ref]
        assert rec["short_description"] == "[CRITICAL] payments-api 5xx"
        assert "Severity:" in rec["description"] and "h3." not in rec["description"]

    run(scenario)
