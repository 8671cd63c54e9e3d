"""pagerstream/gdpr.py without Kafka or Redis: who matches, where, what is rewritten, what only ages out."""

from __future__ import annotations

import asyncio
import json
from collections import namedtuple

import pytest

from pagerstream.gdpr import ERASED, Subject, TopicInfo, _decode, _encode, _scan_topic, mentions, scan_redis, scrub
from pagerstream.schemas import AvroCodec

WHO = Subject(emails=("Ann.Lee@Example.org",), user_ids=("PANN01",))
Rec = namedtuple("Rec", "partition offset key value timestamp")
DAY = 86_400_000


def test_subject_matching():
    assert WHO.found("mail ann.lee@example.ORG now") and WHO.found("u=ann.lee%40example.org")
    assert WHO.found("responder PANN01 (level 1)") and WHO.found('{"id":"PANN01"}')
    assert WHO.found("<ann.lee@example.org>.") and WHO.found("ann.lee@example.org")
    for other in ("PANN012", "XPANN01", "ann.lee@example.com", "joann.lee@example.org", "ann.lee@example.org.uk"):
        assert not WHO.found(f"x {other} y"), other
    assert WHO.scrub("to Ann.Lee@example.org, PANN01") == f"to {ERASED}, {ERASED}"
    with pytest.raises(ValueError):
        Subject()
    with pytest.raises(ValueError):
        Subject(user_ids=("P1",))  # too short to be told apart from everything else


def test_mentions_and_scrub_walk_keys_values_bytes_and_json_in_strings():
    value = {"incidents": {"i-1": {"summary": "Locked: ann.lee@example.org", "members": {"PANN01": "open"},
                                   "alert": json.dumps({"custom": {"mail": "ann.lee@example.org"}})}},
             "body": b"raw ann.lee@example.org", "n": 3, "other": ["bob@example.org"]}
    where = {m["path"] for m in mentions(value, WHO)}
    assert where == {"incidents.i-1.summary", "incidents.i-1.members.PANN01", "incidents.i-1.alert.custom.mail",
                     "body"}
    clean = scrub(value, WHO)
    assert mentions(clean, WHO) == []
    assert clean["incidents"]["i-1"]["members"] == {ERASED: "open"} and clean["body"] == f"raw {ERASED}".encode()
    assert clean["other"] == ["bob@example.org"] and clean["n"] == 3


def test_log_topics_are_reported_with_their_expiry_not_erased():
    info = TopicInfo("p.alerts.raw", "log", retention_ms=7 * DAY)
    recs = [Rec(0, 0, b"k1", b"ann.lee@example.org", 1_000), Rec(1, 5, b"k2", b"nothing here", 2_000),
            Rec(1, 6, b"k3", b'{"who": "PANN01"}', 3_000)]
    rep = _scan_topic(info, recs, WHO)
    assert rep["matching_records"] == 2 and rep["erasable"] == 0
    assert rep["expires_by"] == "1970-01-08T00:00:03Z"  # the newest match + 7 days
    assert [r["offset"] for r in rep["records"]] == [0, 6]
    forever = _scan_topic(TopicInfo("p.audit", "log", retention_ms=-1), recs, WHO)
    assert forever["expires_by"] is None and "kept forever" in forever["note"]
    assert _scan_topic(info, [recs[1]], WHO) is None


def test_compacted_topics_rewrite_the_latest_value_tombstone_keys_and_count_superseded():
    info = TopicInfo("app-groups-changelog", "changelog", cleanup="compact", table="groups", segment_ms=DAY)
    recs = [Rec(0, 0, b"g1", json.dumps({"s": "old ann.lee@example.org"}).encode(), 1),  # superseded by 2
            Rec(1, 1, b"g2", json.dumps({"s": "for ann.lee@example.org"}).encode(), 1),  # current: rewrite
            Rec(0, 2, b"g1", json.dumps({"s": "fine"}).encode(), 2),
            Rec(2, 3, b"t:ann.lee@example.org", json.dumps({"n": 1}).encode(), 3),  # key mentions: tombstone
            Rec(2, 4, b"g3", json.dumps({"s": "PANN01"}).encode(), 4),
            Rec(2, 5, b"g3", None, 5)]  # already deleted
    rep = _scan_topic(info, recs, WHO)
    assert [(c["key"], c["action"]) for c in rep["current"]] == [("g2", "rewrite"), ("t:ann.lee@example.org", "tombstone")]
    assert rep["erasable"] == 2 and rep["superseded"] == 2 and "segment.ms=86400000" in rep["note"]
    config = _scan_topic(TopicInfo("p.pagerstream.catalog", "config", cleanup="compact"), recs, WHO)
    assert config["erasable"] == 0 and "catalog file" in config["note"]
    sealed = _scan_topic(TopicInfo("p.models.checkpoints", "sealed"), recs, WHO)
    assert sealed["scanned"] is False and sealed["erasable"] == 0


def test_avro_records_are_rewritten_in_their_own_schema():
    codec = AvroCodec("raw_alert")
    rec = {"id": "r1", "source": "pagerduty_events_v2", "received_at": 1, "content_type": "application/json",
           "body": b'{"summary": "ann.lee@example.org"}', "attributes": {"user_agent": "x"}}
    decoded, name = _decode(codec.encode(rec))
    assert name == "raw_alert" and decoded == rec
    again = codec.decode(_encode(scrub(decoded, WHO), name))
    assert again["body"] == f'{{"summary": "{ERASED}"}}'.encode() and again["id"] == "r1"
    assert _decode(b'{"a": 1}') == ({"a": 1}, None) and json.loads(_encode({"a": 1}, None)) == {"a": 1}


class FakeRedis:
    def __init__(self, data: dict[bytes, tuple[str, object]]) -> None:
        self.data = data

    async def scan_iter(self, match: str, count: int):
        prefix = match.rstrip("*").encode()
        for k in list(self.data):
            if k.startswith(prefix):
                yield k

    async def type(self, k):
        return self.data[k][0].encode()

    async def get(self, k):
        return self.data[k][1]

    async def hgetall(self, k):
        return self.data[k][1]

    async def zrange(self, k, a, b, withscores):
        return self.data[k][1]

    async def ttl(self, k):
        return 60


def test_redis_keys_are_found_by_name_and_by_value():
    r = FakeRedis({b"pagerstream:t.route:abc": ("string", b'{"responder": {"id": "PANN01"}}'),
                   b"pagerstream:oncall:t:ep:P1": ("hash", {b"level:1": b'{"users": ["ann.lee@example.org"]}'}),
                   b"pagerstream:oncall:t:open:PANN01": ("zset", [(b"i-1", 1.0)]),
                   b"pagerstream:bucket:x": ("string", b"12"),
                   b"other:ann.lee@example.org": ("string", b"not ours")})
    found = asyncio.run(scan_redis(r, WHO))
    assert {f["key"] for f in found} == {"pagerstream:t.route:abc", "pagerstream:oncall:t:ep:P1",
                                         "pagerstream:oncall:t:open:PANN01"}
    by_key = {f["key"]: f for f in found}
    assert by_key["pagerstream:oncall:t:ep:P1"]["mentions"][0]["path"] == "level:1.users[0]"
    assert by_key["pagerstream:oncall:t:open:PANN01"]["mentions"][0]["path"] == "(key)"
