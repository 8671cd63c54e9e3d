"""Sandboxed notification templates: defaults per channel, overrides, escaping, preview and its CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pagerstream.notify import templates as T
from pagerstream.notify.base import Destination, Notification
from pagerstream.notify.templates import TemplateRenderError, preview, preview_command, render

NASTY = 'DB "primary" down \\ <script>alert(1)</script> & {{ 7*7 }} {% raw %}\n\tsecond line ✓'


def record(**over: Any) -> dict[str, Any]:
    rec = {
        "event_id": "inc-3#4", "incident_id": "inc-3", "version": 4, "change": "opened", "reason": "new alert",
        "state": "triggered", "alert_id": "a-1", "dedup_key": "d-1", "pd_dedup_key": "pdkey-inc-3",
        "routing_key_hint": "ABCD", "service": "payments-api", "team": "payments", "tier": "1",
        "runbook_url": "https://runbooks.example.com/payments?a=1&b=2", "summary": "payments 5xx rate above 5%",
        "severity": "critical", "open_alerts": 1, "total_alerts": 2, "duplicates": 1, "opened_at": 1714564800000,
        "acknowledged_at": None, "resolved_at": None, "at": 1714564860000, "pagerduty_action": "trigger",
        "change_detail": None, "alert_type": "payments-api/High5xx",
        "pause": {"paused_until": 1714565100000, "p_resolve": 0.42, "evidence": "12 episodes, 5 cleared within 5m",
                  "model_version": "t1"},
        "scores": [{"model": "classify.category", "label": "availability", "best": "availability", "score": 0.87,
                    "abstained": False, "explanation": "words: 5xx, error rate", "model_version": "c3"},
                   {"model": "classify.severity", "label": None, "best": "error", "score": 0.41, "abstained": True,
                    "explanation": "low confidence", "model_version": "s2"}],
        "similar": [{"incident_id": "old-9", "summary": "payments 5xx after deploy", "service": "payments-api",
                     "resolved_at": 1714000000000, "score": 0.91, "why": "same alert type"}],
        "recurrence": "daily at 02:00 UTC",
    }
    rec.update(over)
    return rec


def note(rec: dict[str, Any] | None = None, **cfg: Any) -> Notification:
    rec = rec or record()
    dest = Destination(name="d", channel=cfg.pop("channel", "slack_api"), config=cfg)
    return Notification(key=f"{rec['incident_id']}#{rec['version']}@d", incident=rec, destination=dest)


# ------------------------------------------------------------------------------------------------
# the sandbox
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",  # even a bare unsafe access fails, it does not quietly print nothing
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{% set x = [] %}{{ x.append(1) }}",
    "{% set d = {} %}{{ d.update(a=1) }}",
    "{{ incident.__class__ }}",
    "{{ range(10**6) | list | length }}",
    "{{ 'x' * 10**7 }}",
    "{{ 2 ** 100000000 }}",
    "{% for i in range(100000) %}{{ 'abcdefghij' }}{% endfor %}",  # a million characters of output
])
def test_sandbox_stops_escapes_and_exhaustion(source):
    with pytest.raises(TemplateRenderError) as e:
        render("slack_thread.txt.j2", note(**{"templates": {"slack_thread.txt.j2": {"inline": source}}}))
    assert "slack_thread.txt.j2" in str(e.value)
    assert "<class" not in str(e.value)  # nothing of the object graph leaks into the error


def test_preview_of_an_escaping_template_fails_safely():
    with pytest.raises(TemplateRenderError, match="sandbox"):
        preview("{{ ''.__class__.__mro__ }}", record())


def test_harmless_templates_render():
    out = render("slack_thread.txt.j2", note(templates={"slack_thread.txt.j2": {
        "inline": "{{ summary | upper }} {{ scores | map(attribute='model') | join(',') }} {{ incident.get('team') }}"}}))
    assert out == "PAYMENTS 5XX RATE ABOVE 5% classify.category,classify.severity payments"


# ------------------------------------------------------------------------------------------------
# defaults: content and escaping
# ------------------------------------------------------------------------------------------------

CONTENT = ["payments 5xx rate above 5%", "critical", "high", "payments-api", "payments",
           "runbooks.example.com/payments", "classify.category", "availability", "87%", "words: 5xx, error rate",
           "error?", "payments 5xx after deploy", "old-9", "same alert type", "daily at 02:00 UTC",
           "12 episodes, 5 cleared within 5m", "42%"]


@pytest.mark.parametrize("name", ["slack.json.j2", "teams.json.j2", "email.html.j2", "email.txt.j2", "jira.txt.j2",
                                  "webhook.json.j2"])
def test_every_default_carries_the_incident_story(name):
    out = render(name, note())
    text = json.dumps(json.loads(out)) if name.endswith(".json.j2") else out
    if name == "email.html.j2":
        text = text.replace("&amp;", "&")
    missing = [c for c in CONTENT if c not in text]
    if name == "webhook.json.j2":  # machine-readable: values, not formatted percentages/labels
        missing = [c for c in missing if c not in ("87%", "42%", "error?", "high")]
        assert json.loads(out)["urgency"] == "high"
    assert missing == []


def test_all_default_templates_render_for_every_state():
    for rec in (record(), record(change="acknowledged", state="acknowledged"),
                record(change="resolved", state="resolved", scores=[], similar=[], pause=None, recurrence=None,
                       runbook_url=None, service=None, team=None, reason="")):
        for name in T.default_template_names():
            out = render(name, note(rec))
            assert out.strip(), name
            if T.is_json_template(name):
                json.loads(out)


@pytest.mark.parametrize("name,path", [("webhook.json.j2", ["summary"]), ("slack.json.j2", ["blocks", 0, "text", "text"]),
                                       ("teams.json.j2", ["fallbackText"])])
def test_json_outputs_stay_valid_json_whatever_the_text(name, path):
    out = json.loads(render(name, note(record(summary=NASTY, reason=NASTY, service=NASTY))))
    for p in path:
        out = out[p]
    if name == "slack.json.j2":
        assert out == NASTY.replace("\n", " ")  # header: one line, plain_text (no escaping needed)
    elif name == "teams.json.j2":
        assert out.startswith("[CRITICAL] " + NASTY[:20])
    else:
        assert out == NASTY


def test_slack_mrkdwn_text_is_escaped():
    msg = json.loads(render("slack.json.j2", note(record(summary="<!channel> & <@U123|x>"))))
    assert msg["text"] == "[CRITICAL] triggered: &lt;!channel&gt; &amp; &lt;@U123|x&gt;"
    reply = render("slack_thread.txt.j2", note(record(reason="<!here> please")))
    assert "&lt;!here&gt; please" in reply and "<!here>" not in reply


def test_html_is_autoescaped_and_text_is_not():
    rec = record(summary=NASTY, runbook_url="javascript:alert(document.cookie)")
    html = render("email.html.j2", note(rec))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "javascript:" not in html
    txt = render("email.txt.j2", note(rec))
    assert "<script>alert(1)</script>" in txt and "javascript:" not in txt  # no link for a non-http runbook
    assert "{{ 7*7 }}" in txt and "49" not in txt  # data is never evaluated as a template


def test_urgency_and_open_state():
    assert T.urgency_of({"severity": "critical"}) == "high"
    assert T.urgency_of({"severity": "error"}) == "high"
    assert T.urgency_of({"severity": "warning"}) == "low"
    assert T.urgency_of({"severity": "info", "urgency": "high"}) == "high"
    assert T.is_open({"state": "triggered", "change": "opened"})
    assert T.is_open({"state": "acknowledged", "change": "acknowledged"})
    assert not T.is_open({"state": "resolved", "change": "resolved"})
    assert not T.is_open({"state": "triggered", "change": "dropped"})


def test_filters():
    f = T.FILTERS
    assert f["mrkdwn"]("a & <b>") == "a &amp; &lt;b&gt;"
    assert f["clip"]("abcdef", 4) == "abc…" and f["clip"]("abc", 4) == "abc"
    assert f["pct"](0.876) == "88%" and f["pct"]("x") == ""
    assert f["datetime"](1714564800000) == "2024-05-01 12:00:00 UTC"
    assert f["isotime"](1714564800000) == "2024-05-01T12:00:00Z"
    assert f["duration"](3_723_000) == "1h 2m"
    assert f["safe_url"]("https://x.example/a") == "https://x.example/a"
    assert f["safe_url"]("javascript:alert(1)") == "" and f["safe_url"]("https://x/ a") == ""
    assert T.GLOBALS["slack_link"]("https://x.example/a|b", "Run <book>") == "<https://x.example/a%7Cb|Run &lt;book&gt;>"
    assert T.GLOBALS["slack_link"]("ftp://x", "t") == "t"


def test_configured_links_are_formatted_and_filtered():
    n = note(links=[{"title": "Dashboard", "url": "https://grafana.example/d/{service}?incident={incident_id}"},
                    {"title": "Bad", "url": "javascript:alert('{incident_id}')"},
                    {"title": "Broken", "url": "https://x/{nope}"}])
    ctx = T.template_context(n)
    assert ctx["links"] == [{"title": "Runbook", "url": "https://runbooks.example.com/payments?a=1&b=2"},
                            {"title": "Dashboard", "url": "https://grafana.example/d/payments-api?incident=inc-3"}]


# ------------------------------------------------------------------------------------------------
# overrides
# ------------------------------------------------------------------------------------------------

def test_destination_overrides(tmp_path: Path, monkeypatch):
    assert render("slack_thread.txt.j2", note(template="{{ summary }}")) != "payments 5xx rate above 5%"  # not primary
    assert render("slack.json.j2", note(template='{"text": {{ summary | json }}, "blocks": []}')) == \
        '{"text": "payments 5xx rate above 5%", "blocks": []}'
    assert render("slack.json.j2", note(template={"inline": '{"text": "x"}'})) == '{"text": "x"}'
    assert render("slack_thread.txt.j2", note(templates={"slack_thread.txt.j2": "v{{ version }}"})) == "v4"
    f = tmp_path / "mine.txt.j2"
    f.write_text("file says {{ severity }}")
    assert render("jira.txt.j2", note(channel="jira", template={"path": str(f)})) == "file says critical"
    monkeypatch.setenv(T.TEMPLATES_DIR_ENV, str(tmp_path))
    assert render("jira.txt.j2", note(channel="jira", template="mine.txt.j2")) == "file says critical"
    f.write_text("changed {{ severity }}")  # edits are picked up
    assert render("jira.txt.j2", note(channel="jira", template="mine.txt.j2")) == "changed critical"


@pytest.mark.parametrize("spec,match", [
    ({"path": "/nonexistent/x.j2"}, "not found"),
    ({"inline": "{% if %}"}, "does not compile"),
    ({"inline": '{"text": {{ summary }}}'}, "did not produce valid JSON"),  # forgot | json
    ({"inline": "x", "path": "y"}, "exactly one"),
    ({"inline": "{{ 1 / 0 }}"}, "ZeroDivisionError"),
])
def test_broken_overrides_raise_template_errors(spec, match):
    with pytest.raises(TemplateRenderError, match=match):
        render("slack.json.j2", note(template=spec))


def test_unknown_template_name():
    with pytest.raises(TemplateRenderError, match="no template named"):
        render("nope.txt.j2", note())


# ------------------------------------------------------------------------------------------------
# preview and the CLI
# ------------------------------------------------------------------------------------------------

def test_preview_by_channel_name_path_and_inline(tmp_path: Path):
    out = preview("slack", record())
    assert json.loads(out)["blocks"][0]["type"] == "header" and out.startswith("{\n  ")
    assert preview("email.txt.j2", record()).startswith("payments 5xx rate above 5%")
    f = tmp_path / "p.txt.j2"
    f.write_text("{{ incident_id }}/{{ urgency }}")
    assert preview(str(f), record()) == "inc-3/high"
    assert preview("{{ service }}!", record()) == "payments-api!"


def test_preview_fills_defaults_and_names_missing_fields():
    minimal = {k: v for k, v in record().items()
               if k not in ("scores", "similar", "pause", "recurrence", "alert_id", "dedup_key", "service", "team")}
    assert "payments 5xx" in preview("email.txt.j2", minimal)
    with pytest.raises(ValueError, match="summary, severity"):
        preview("slack", {k: v for k, v in record().items() if k not in ("summary", "severity")})


def test_preview_command(tmp_path: Path):
    f = tmp_path / "rec.json"
    f.write_text(json.dumps(record()))
    runner = CliRunner()
    r = runner.invoke(preview_command, ["--channel", "slack", "--incident-file", str(f)])
    assert r.exit_code == 0, r.output
    payload_text, _, thread = r.output.partition("--- slack_thread.txt.j2 ---")
    payload = json.loads(payload_text)
    actions = [b for b in payload["blocks"] if b["type"] == "actions"]
    assert [e["action_id"] for e in actions[0]["elements"]] == ["pagerstream_ack", "pagerstream_resolve",
                                                               "pagerstream_escalate"]
    assert "*Opened*" in thread

    r = runner.invoke(preview_command, ["--channel", "teams", "--incident-file", str(f)])
    assert r.exit_code == 0, r.output
    card = json.loads(r.output)["attachments"][0]["content"]
    assert [a["title"] for a in card["actions"]] == ["Acknowledge", "Resolve", "Runbook"]

    r = runner.invoke(preview_command, ["--channel", "email", "--incident-file", str(f)])
    assert r.exit_code == 0 and "--- email_subject.txt.j2 ---\n[CRITICAL] triggered" in r.output
    assert "<h2>payments 5xx rate above 5%</h2>" in r.output

    r = runner.invoke(preview_command, ["--channel", "slack", "--incident-file", str(f), "--raw",
                                        "--template", '{"text": {{ severity | json }}}'])
    assert r.exit_code == 0 and r.output.startswith("--- slack.json.j2 ---\n")
    assert json.loads(r.output.split("--- ")[1].split("\n", 1)[1]) == {"text": "critical"}

    r = runner.invoke(preview_command, ["--channel", "slack", "--incident-file", str(f),
                                        "--template", "{{ ''.__class__.__mro__ }}"])
    assert r.exit_code != 0 and "sandbox" in r.output

    bad = tmp_path / "bad.json"
    bad.write_text('{"summary": "x"}')
    r = runner.invoke(preview_command, ["--channel", "slack", "--incident-file", str(bad)])
    assert r.exit_code != 0 and "lacks required fields" in r.output


def test_preview_command_reads_stdin():
    r = CliRunner().invoke(preview_command, ["--channel", "jira", "--incident-file", "-"], input=json.dumps(record()))
    assert r.exit_code == 0 and r.output.startswith("--- jira_summary.txt.j2 ---\n[CRITICAL] payments")
