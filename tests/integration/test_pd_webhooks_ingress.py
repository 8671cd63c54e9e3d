"""PagerDuty V3 webhooks through a real worker into the real Kafka (route POST /pagerduty/webhooks/{name}).

Deliveries are signed here the way PagerDuty signs them (HMAC-SHA256 of the raw body, `v1=<hex>`) and
posted over HTTP; what lands on `<prefix>pagerduty.webhooks` is read back with a plain Kafka consumer and
decoded with the Avro registry. A 2xx is only given after Kafka acknowledged, so every check on the topic
runs right after the responses, without polling.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pagerstream.schemas.codec import registry
from prometheus_client.parser import text_string_to_metric_families

from pagerstream.localrun import free_port
from pagerstream.pagerduty.webhooks import sign_body
from tests.conftest import WorkerFactory
from tests.integration.helpers import read_topic
from tests.stack import kafka_bootstrap

pytestmark = pytest.mark.integration

WEBHOOKS_V3 = Path(__file__).resolve().parents[2].parent / "shared" / "contracts" / "pagerduty" / "webhooks-v3"
needs_contracts = pytest.mark.skipif(not WEBHOOKS_V3.is_dir(), reason=f"contracts not found at {WEBHOOKS_V3}")

SECRET = "Zq3vN8c0m1xP4L7tR2yW6uE9iO5aS1dF3gH7jK0lQ8zX2cV4bN6mA9sD1fG5hJ7k"
OLD = "oLd/SeCrEt+0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"
NEW = "nEw/SeCrEt+0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"
SECRETS_ENV = f"ops={SECRET},rotating={OLD}|{NEW}"
PING = (b'{"event":{"id":"01PING%s","event_type":"pagey.ping","resource_type":"pagey",'
        b'"occurred_at":"2025-04-07T03:00:55.532Z","agent":null,"client":null,'
        b'"data":{"message":"Hello from your friend Pagey!","type":"ping"}}}')


def ping(tag: str | None = None) -> bytes:
    return PING % (tag or uuid.uuid4().hex[:10]).encode()


@pytest.fixture(scope="module")
def hook_worker(stack, logdir, sandbox):
    f = WorkerFactory(logdir, sandbox)
    w = f.start(f.env({"PAGERDUTY_WEBHOOK_SECRETS": SECRETS_ENV}))
    yield w
    f.close()


def topic_of(worker) -> str:
    return worker.env["PAGERSTREAM_TOPIC_PREFIX"] + "pagerduty.webhooks"


def post(worker, body: bytes, *, sub: str = "ops", secret: str | list[str] | None = SECRET,
         webhook_id: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    h = {"Content-Type": "application/json", "User-Agent": "PagerDuty-Webhook/V3.0",
         "X-Webhook-Subscription": "PXSUIZH"}
    if secret is not None:
        h["X-PagerDuty-Signature"] = sign_body(body, secret)
    if webhook_id is not None:
        h["X-Webhook-Id"] = webhook_id
    h.update(headers or {})
    return httpx.post(f"{worker.url}/pagerduty/webhooks/{sub}", content=body, headers=h, timeout=30)


def recorded(worker, webhook_ids: set[str]) -> list[dict[str, Any]]:
    return [r for r in read_topic(kafka_bootstrap(), topic_of(worker), idle=2.0)
            if isinstance(r["value"], dict) and r["value"].get("webhook_id") in webhook_ids]


def counters(worker) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(worker.metrics()):
        if fam.name.startswith("pagerstream_pagerduty_webhooks") or fam.name == "pagerstream_ingress_requests":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    k = (f"pagerstream_pagerduty_webhooks_{name}_total", tuple(sorted(labels.items())))
    return after.get(k, 0.0) - before.get(k, 0.0)


def _deliveries() -> list[Path]:
    files = sorted(WEBHOOKS_V3.glob("examples/**/*.json")) + sorted(WEBHOOKS_V3.glob("signature-vectors/bodies/*"))
    return [f for f in files if "event" in json.loads(f.read_bytes())]


@needs_contracts
def test_signed_examples_land_on_the_topic_with_their_fields(hook_worker):
    files = _deliveries()
    assert len(files) >= 25
    sent: dict[str, tuple[Path, bytes]] = {}
    before = counters(hook_worker)
    for f in files:
        body = f.read_bytes()
        wid = str(uuid.uuid4())
        r = post(hook_worker, body, webhook_id=wid)
        assert r.status_code == 202, (f.name, r.status_code, r.text)
        assert r.json() == {"status": "accepted", "message": "recorded",
                            "event_id": json.loads(body)["event"]["id"]}
        sent[wid] = (f, body)

    got = recorded(hook_worker, set(sent))
    assert sorted(r["value"]["webhook_id"] for r in got) == sorted(sent)  # each exactly once
    fp = registry().fingerprints["pagerduty_webhook"]
    partitions_by_key: dict[bytes, set[int]] = {}
    for r in got:
        v = r["value"]
        f, body = sent[v["webhook_id"]]
        ev = json.loads(body)["event"]
        data = ev["data"]
        assert r["raw"][:2] == b"\xc3\x01" and r["raw"][2:10] == fp, f.name
        assert v["_schema"] == "io.pagerstream.v1.PagerDutyWebhook"
        assert (v["event_id"], v["event_type"], v["resource_type"], v["data_type"]) == \
            (ev["id"], ev["event_type"], ev["resource_type"], data["type"]), f.name
        assert (v["subscription"], v["pd_subscription_id"]) == ("ops", "PXSUIZH")
        assert v["payload_json"].encode() == body, f.name  # byte for byte
        if data["type"] == "incident":
            want_incident = data["id"]
            assert (v["incident_number"], v["incident_status"], v["incident_key"]) == \
                (data["number"], data["status"], data.get("incident_key")), f.name
            assert v["assignee_ids"] == [a["id"] for a in data["assignees"]]
            assert v["service_id"] == data["service"]["id"]
        else:
            want_incident = (data.get("incident") or {}).get("id")
        assert v["incident_id"] == want_incident, f.name
        want_key = want_incident or data.get("id") or ev["id"]
        assert r["key"] == want_key.encode(), f.name
        partitions_by_key.setdefault(r["key"], set()).add(r["partition"])
    # keyed by incident: all webhooks of one incident share a partition (hence their order)
    assert all(len(p) == 1 for p in partitions_by_key.values())
    multi = [k for k in partitions_by_key if sum(1 for r in got if r["key"] == k) > 1]
    assert multi, "the examples contain several events of one incident"

    after = counters(hook_worker)
    assert delta(before, after, "received", subscription="ops") == len(files)
    assert delta(before, after, "verified", subscription="ops") == len(files)
    assert delta(before, after, "produced", subscription="ops", known="true") + \
        delta(before, after, "produced", subscription="ops", known="false") == len(files)


def test_a_replayed_webhook_id_is_recorded_once(hook_worker):
    body, wid = ping(), str(uuid.uuid4())
    before = counters(hook_worker)
    statuses = [post(hook_worker, body, webhook_id=wid) for _ in range(3)]
    assert [r.status_code for r in statuses] == [202, 200, 200]
    assert [r.json()["status"] for r in statuses] == ["accepted", "duplicate", "duplicate"]
    got = recorded(hook_worker, {wid})
    assert len(got) == 1 and got[0]["value"]["payload_json"].encode() == body
    after = counters(hook_worker)
    assert delta(before, after, "duplicates", subscription="ops") == 2
    assert delta(before, after, "produced", subscription="ops", known="true") == 1


def test_without_x_webhook_id_the_event_id_dedupes(hook_worker):
    body = ping()
    assert [post(hook_worker, body).status_code for _ in range(2)] == [202, 200]
    evid = json.loads(body)["event"]["id"]
    got = [r for r in read_topic(kafka_bootstrap(), topic_of(hook_worker), idle=2.0)
           if isinstance(r["value"], dict) and r["value"].get("event_id") == evid]
    assert len(got) == 1 and got[0]["value"]["webhook_id"] is None


def test_bad_signatures_get_401_and_record_nothing(hook_worker):
    body, wid = ping(), str(uuid.uuid4())
    other = ping()
    before = counters(hook_worker)
    attempts = {
        "missing_signature": post(hook_worker, body, secret=None, webhook_id=wid),
        "bad_signature": post(hook_worker, body, secret="not-the-secret-" * 3, webhook_id=wid),
    }
    # signed for another body, tampered after signing, another subscription's secret, unknown version
    tampered = post(hook_worker, body, headers={"X-PagerDuty-Signature": sign_body(other, SECRET)}, webhook_id=wid)
    flipped = post(hook_worker, body.replace(b"Pagey", b"pagey"), headers={"X-PagerDuty-Signature":
                                                                           sign_body(body, SECRET)}, webhook_id=wid)
    wrong_sub = post(hook_worker, body, secret=NEW, webhook_id=wid)
    v2 = post(hook_worker, body, headers={"X-PagerDuty-Signature": sign_body(body, SECRET).replace("v1=", "v2=")},
              webhook_id=wid)
    for r in [*attempts.values(), tampered, flipped, wrong_sub, v2]:
        assert r.status_code == 401, r.text
        j = r.json()
        assert j["status"] == "unauthorized" and j["errors"] and "X-PagerDuty-Signature" in j["message"]
        assert SECRET not in r.text
    assert recorded(hook_worker, {wid}) == []
    after = counters(hook_worker)
    assert delta(before, after, "rejected", reason="missing_signature") == 1
    assert delta(before, after, "rejected", reason="bad_signature") == 5
    assert delta(before, after, "verified", subscription="ops") == 0
    # the refused attempts did not claim the webhook id: the genuine delivery is recorded
    assert post(hook_worker, body, webhook_id=wid).status_code == 202
    got = recorded(hook_worker, {wid})
    assert len(got) == 1 and got[0]["value"]["payload_json"].encode() == body


@needs_contracts
def test_unknown_and_ping_event_types_get_2xx_and_are_recorded(hook_worker):
    unknown = (WEBHOOKS_V3 / "examples" / "zulip" / "unsupported_v3.json").read_bytes()
    made_up = ping().replace(b'"pagey.ping"', b'"incident.brand_new_thing.happened"')
    ids = {str(uuid.uuid4()): unknown, str(uuid.uuid4()): made_up, str(uuid.uuid4()): ping()}
    for wid, body in ids.items():
        r = post(hook_worker, body, webhook_id=wid)
        assert r.status_code == 202, r.text
    got = {r["value"]["webhook_id"]: r["value"] for r in recorded(hook_worker, set(ids))}
    assert set(got) == set(ids)
    kinds = sorted((v["event_type"], v["known_event_type"]) for v in got.values())
    assert kinds == [("incident.brand_new_thing.happened", False), ("incident.unsupported", False),
                     ("pagey.ping", True)]


def test_rotation_either_secret_and_the_two_signature_header(hook_worker):
    ids = {}
    for signer in (OLD, NEW, [NEW, "someone-else-entirely-0123456789abcdef"], ["x" * 40, OLD]):
        wid, body = str(uuid.uuid4()), ping()
        r = post(hook_worker, body, sub="rotating", secret=signer, webhook_id=wid)
        assert r.status_code == 202, r.text
        ids[wid] = body
    # a secret of another subscription does not open this one
    assert post(hook_worker, ping(), sub="rotating", secret=SECRET).status_code == 401
    got = recorded(hook_worker, set(ids))
    assert sorted(r["value"]["webhook_id"] for r in got) == sorted(ids)
    assert {r["value"]["subscription"] for r in got} == {"rotating"}


def test_refusals_404_400_413_record_nothing(hook_worker):
    before = counters(hook_worker)
    wid = str(uuid.uuid4())
    r = post(hook_worker, ping(), sub="no-such-subscription", webhook_id=wid)
    assert r.status_code == 404 and r.json()["status"] == "not found"
    r = post(hook_worker, b"", secret=None, webhook_id=wid, headers={"X-PagerDuty-Signature": "v1=" + "0" * 64})
    assert r.status_code == 400 and r.json()["errors"] == ["empty body"]
    r = post(hook_worker, b"this is not json", webhook_id=wid)  # signed, but not JSON
    assert r.status_code == 400 and r.json()["errors"] == ["body is not valid JSON"]
    r = post(hook_worker, b'{"event": {"id": "01X"}}', webhook_id=wid)  # signed, not an envelope
    assert r.status_code == 400 and any("'event_type' is a required property" in e for e in r.json()["errors"])
    big = ping()[:-2] + b',"pad":"' + b"x" * 600_000 + b'"}}'
    r = post(hook_worker, big, webhook_id=wid)
    assert r.status_code == 413
    r = post(hook_worker, ping(), webhook_id="w" * 300)
    assert r.status_code == 400
    assert recorded(hook_worker, {wid, "w" * 300}) == []
    after = counters(hook_worker)
    for reason in ("unknown_subscription", "empty_body", "bad_json", "bad_envelope", "too_large", "bad_webhook_id"):
        assert delta(before, after, "rejected", reason=reason) == 1, reason
    ing = {k: v for k, v in after.items() if k[0] == "pagerstream_ingress_requests_total"
           and ("source", "pagerduty_webhook") in k[1]}
    assert ing, after.keys()


def test_with_redis_down_every_delivery_is_still_recorded(workers):
    """Redis refuses connections: nothing is lost, duplicates are possible and counted."""
    env = workers.env({"PAGERDUTY_WEBHOOK_SECRETS": SECRETS_ENV, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    w = workers.start(env)
    body, wid = ping(), str(uuid.uuid4())
    statuses = [post(w, body, webhook_id=wid).status_code for _ in range(2)]
    assert statuses == [202, 202]
    got = recorded(w, {wid})
    assert len(got) == 2 and {r["value"]["payload_json"].encode() for r in got} == {body}
    c = counters(w)
    assert c[("pagerstream_pagerduty_webhooks_dedup_unavailable_total", ())] == 2
    assert c.get(("pagerstream_pagerduty_webhooks_duplicates_total", (("subscription", "ops"),)), 0) == 0


def test_when_kafka_refuses_the_answer_is_503_and_the_retry_is_recorded(stack):
    """The receiver in-process, against the real Redis, a Kafka address nobody listens on, then the real
    Kafka: a delivery Kafka did not take must not leave its webhook id claimed, or PagerDuty's retry
    would be answered 'duplicate' and the event lost."""
    import asyncio

    import redis.asyncio as aioredis
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from pagerstream.schemas.codec import AvroCodec
    from prometheus_client import CollectorRegistry

    from pagerstream.config import Secret
    from pagerstream.pagerduty.webhooks import WebhookDedup, WebhookMetrics, WebhookReceiver
    from tests.stack import redis_url

    run = uuid.uuid4().hex[:8]
    topic = f"it-pdwh-{run}.pagerduty.webhooks"
    body, wid = ping(), str(uuid.uuid4())
    kafka = {"bootstrap": f"127.0.0.1:{free_port()}"}  # first: nothing listening there

    reg = CollectorRegistry()

    async def scenario() -> tuple[list[int], list[int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 2, 1)])
        finally:
            await admin.close()

        async def produce(key: bytes, value: bytes) -> None:
            p = AIOKafkaProducer(bootstrap_servers=kafka["bootstrap"], acks="all", request_timeout_ms=3000)
            await p.start()
            try:
                await p.send_and_wait(topic, value, key=key)
            finally:
                await p.stop()

        r = aioredis.from_url(redis_url(), socket_timeout=2, socket_connect_timeout=2)
        dedup = WebhookDedup(r, namespace=f"it-{run}.")
        metrics = WebhookMetrics(reg)
        rx = WebhookReceiver(secrets_for=lambda n: (Secret(SECRET),) if n == "ops" else None, dedup=dedup,
                             produce=produce, metrics=metrics, codec=AvroCodec("pagerduty_webhook"))
        app = web.Application()
        app.router.add_post("/pagerduty/webhooks/{subscription}", rx.handle)
        headers = {"X-PagerDuty-Signature": sign_body(body, SECRET), "X-Webhook-Id": wid}
        statuses, claimed = [], []
        try:
            async with TestClient(TestServer(app)) as client:
                resp = await client.post("/pagerduty/webhooks/ops", data=body, headers=headers)
                statuses.append(resp.status)
                claimed.append(await r.exists(dedup.key("ops", wid)))
                kafka["bootstrap"] = kafka_bootstrap()  # Kafka is back; PagerDuty retries
                for _ in range(2):
                    resp = await client.post("/pagerduty/webhooks/ops", data=body, headers=headers)
                    statuses.append(resp.status)
                claimed.append(await r.exists(dedup.key("ops", wid)))
        finally:
            await r.delete(dedup.key("ops", wid))
            await r.aclose()
        return statuses, claimed

    statuses, claimed = asyncio.run(scenario())
    assert statuses == [503, 202, 200]
    assert claimed == [0, 1]  # released after the 503, held after the 202
    assert reg.get_sample_value("pagerstream_pagerduty_webhooks_rejected_total", {"reason": "kafka_unavailable"}) == 1
    got = read_topic(kafka_bootstrap(), topic, idle=2.0)
    assert len(got) == 1 and got[0]["value"]["webhook_id"] == wid

    async def drop_topic() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap())
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()

    asyncio.run(drop_topic())
