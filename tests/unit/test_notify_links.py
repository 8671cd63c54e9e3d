"""One-click action links (pagerstream/notify/links.py) against the PagerDuty REST sandbox and the real
Redis at REDIS_URL (unique key prefix per test, removed afterwards).

What must hold: a GET (or HEAD) never acts, a POST acts exactly once, a second use explains who used
it and when and changes nothing, an expired link explains itself and changes nothing, a tampered one
is refused with 403. "Changes nothing" is checked in the sandbox's request log (no PUT /incidents/...)
and in the incident's status.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
import uuid
from urllib.parse import urlencode

import httpx
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from pagerstream.streams import pd_sandbox
from pagerstream.streams.itsm_standins import StandinServer
from pagerstream.streams.pd_rest_sandbox import rest_state

from pagerstream.notify import links
from pagerstream.notify.links import (
    ActionLinks,
    LinkKeyError,
    TamperedLink,
    add_link_routes,
    derive_link_key,
    link_handler,
    link_keys,
    make_link,
    parse_link,
    verify_link,
)
from pagerstream.pagerduty.rest import PagerDutyREST, RetryPolicy

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PD_KEY = "u+pagerstreamTESTkey_0123456789-abc"
EMAIL = "oncall.bot@example.com"
LINK_KEY = b"k" * 32
INCIDENT_KEY = "pagerstream-0123456789abcdef-1"


def seed() -> dict:
    return {
        "users": [{"id": "PBOT001", "name": "Oncall Bot", "email": EMAIL}],
        "services": [{"id": "PSVC001", "name": "payments-api"}],
        "incidents": [
            {"id": "PINC001", "title": "payments 5xx", "service_id": "PSVC001", "incident_key": INCIDENT_KEY}
        ],
    }


class Env:
    def __init__(self, sb, state, pd, red, prefix, url, http):
        self.sb, self.state, self.pd, self.redis, self.prefix, self.url, self.http = (
            sb,
            state,
            pd,
            red,
            prefix,
            url,
            http,
        )

    def link(self, action="acknowledge", *, ttl=3600, now=None, key=LINK_KEY, incident_key=INCIDENT_KEY):
        return make_link(self.url + "/act", "0123456789abcdef-1", action, incident_key, ttl, key, now=now)

    def puts(self):
        return [r for r in self.state.find_requests(method="PUT") if r["path"].startswith("/incidents/")]

    def status(self, iid="PINC001"):
        return self.state.collections["incidents"][iid]["status"]

    async def post(self, url, **form):
        return await self.http.post(url.split("?")[0], data={**parse_link(url), **form})


def run(scenario, *, retry: RetryPolicy | None = None, clock=time.time):
    async def main():
        prefix = f"pagerstream:test:links:{uuid.uuid4().hex}:"
        red = aioredis.from_url(REDIS_URL)
        try:
            async with pd_sandbox.SandboxServer(host="127.0.0.1", port=0) as sb:
                state = rest_state(sb.app)
                state.seed(seed())
                pd = PagerDutyREST(
                    base_url=sb.url,
                    allow_private=True,
                    api_key=PD_KEY,
                    from_email=EMAIL,
                    rng=random.Random(1),
                    retry=retry,
                )
                app = web.Application()
                add_link_routes(
                    app,
                    "/act",
                    link_handler(keys=[LINK_KEY], redis=red, pagerduty=pd, prefix=prefix, clock=clock),
                )
                async with StandinServer(app) as srv, httpx.AsyncClient(timeout=30) as http:
                    try:
                        return await scenario(Env(sb, state, pd, red, prefix, srv.url, http))
                    finally:
                        await pd.aclose()
        finally:
            keys = [k async for k in red.scan_iter(match=prefix + "*")]
            if keys:
                await red.delete(*keys)
            await red.aclose()

    return asyncio.run(main())


# ------------------------------------------------------------------------------------------------
# link format and keys
# ------------------------------------------------------------------------------------------------


def test_link_round_trip_and_every_field_is_signed():
    url = make_link("https://ps.example.com/act", "inc-1", "resolve", "pd key/1", 600, LINK_KEY, now=1000)
    p = parse_link(url)
    assert url.startswith("https://ps.example.com/act?")
    c = verify_link(p, LINK_KEY)
    assert (c.incident_id, c.action, c.pd_incident_key, c.expiry) == ("inc-1", "resolve", "pd key/1", 1600)
    for field, value in (("i", "inc-2"), ("a", "acknowledge"), ("k", "other"), ("e", "999999"), ("n", "x")):
        with pytest.raises(TamperedLink):
            verify_link({**p, field: value}, LINK_KEY)
    with pytest.raises(TamperedLink):
        verify_link({k: v for k, v in p.items() if k != "s"}, LINK_KEY)
    with pytest.raises(TamperedLink):
        verify_link(p, b"another key of enough length!!!!")
    with pytest.raises(ValueError):
        make_link("https://x/act", "inc-1", "delete", "k", 60, LINK_KEY)
    assert parse_link(make_link("https://x/act", "i", "resolve", "k", 60, LINK_KEY))["n"] != p["n"]


def test_keys_from_encryption_key_or_dedicated_secret_with_rotation():
    old, new = (base64.urlsafe_b64encode(os.urandom(32)).decode() for _ in range(2))
    derived = link_keys({"ENCRYPTION_KEY": f"{new},{old}"})
    assert derived == [derive_link_key(new), derive_link_key(old)]
    assert derive_link_key(new) != base64.urlsafe_b64decode(new)  # never the encryption key itself
    signed_before_rotation = make_link(
        "https://x/act", "i", "resolve", "k", 60, link_keys({"ENCRYPTION_KEY": old})
    )
    assert verify_link(parse_link(signed_before_rotation), derived).action == "resolve"
    dedicated = "d" * 40
    assert link_keys({"ENCRYPTION_KEY": new, links.KEY_ENV: dedicated}) == [dedicated.encode()]
    with pytest.raises(LinkKeyError):
        link_keys({links.KEY_ENV: "short"})
    with pytest.raises(LinkKeyError):
        link_keys({})


def test_action_links_for_channel_context():
    al = ActionLinks("https://x/act", LINK_KEY, ttl_s=60, clock=lambda: 5000)
    c = verify_link(parse_link(al("inc-1", "acknowledge", "pd-1")), LINK_KEY)
    assert (c.pd_incident_key, c.expiry) == ("pd-1", 5060)
    # two arguments (ChannelContext's declared signature): pagerstream's grouped-incident key
    assert (
        verify_link(parse_link(al("inc-1", "acknowledge")), LINK_KEY).pd_incident_key == "pagerstream-inc-1"
    )


# ------------------------------------------------------------------------------------------------
# handler
# ------------------------------------------------------------------------------------------------


def test_get_and_head_show_a_confirmation_and_never_act():
    async def scenario(env: Env):
        url = env.link("resolve")
        r = await env.http.get(url)
        assert r.status_code == 200
        assert '<form method="post"' in r.text and "Resolve" in r.text and "works once" in r.text
        assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Frame-Options"] == "DENY"
        assert (await env.http.head(url)).status_code == 200
        again = await env.http.get(url)  # a scanner fetching twice does not use the link up
        assert again.status_code == 200
        assert env.puts() == [] and env.status() == "triggered"
        assert [k async for k in env.redis.scan_iter(match=env.prefix + "*")] == []

    run(scenario)


def test_post_acts_once_and_a_second_use_explains_itself():
    async def scenario(env: Env):
        url = env.link("acknowledge")
        r = await env.post(url, name="Ada Responder")
        assert r.status_code == 200, r.text
        assert "acknowledged" in r.text
        assert env.status() == "acknowledged"
        assert len(env.puts()) == 1
        assert env.puts()[0]["body"]["incident"]["status"] == "acknowledged"

        again = await env.post(url, name="Bob")
        assert again.status_code == 409
        assert "already used at" in again.text.lower() and "Ada Responder" in again.text
        assert "Nothing was changed" in again.text
        shown = await env.http.get(url)  # the GET explains it too, without a form
        assert shown.status_code == 409 and "Ada Responder" in shown.text and "<form" not in shown.text
        assert len(env.puts()) == 1

    run(scenario)


def test_concurrent_posts_act_once():
    async def scenario(env: Env):
        url = env.link("resolve")
        rs = await asyncio.gather(*(env.post(url, name=f"user{i}") for i in range(5)))
        assert sorted(r.status_code for r in rs) == [200, 409, 409, 409, 409]
        assert len(env.puts()) == 1 and env.status() == "resolved"

    run(scenario)


def test_expired_link_explains_and_changes_nothing():
    async def scenario(env: Env):
        url = env.link("resolve", ttl=3600, now=time.time() - 7200)
        g = await env.http.get(url)
        assert g.status_code == 410 and "expired" in g.text and "<form" not in g.text
        p = await env.post(url, name="Ada")
        assert p.status_code == 410 and "Nothing was changed" in p.text
        assert env.puts() == [] and env.status() == "triggered"

    run(scenario)


def test_tampered_links_are_refused():
    async def scenario(env: Env):
        good = parse_link(env.link("acknowledge"))
        base = env.url + "/act"
        variants = [
            {**good, "a": "resolve"},
            {**good, "e": str(int(good["e"]) + 86400)},
            {**good, "k": "pagerstream-someone-else"},
            {**good, "s": good["s"][:-2] + "AA"},
            {k: v for k, v in good.items() if k != "n"},
        ]
        for v in variants:
            g = await env.http.get(base + "?" + urlencode(v))
            assert g.status_code == 403, v
            p = await env.http.post(base, data=v)
            assert p.status_code == 403, v
        other_key = env.link("acknowledge", key=b"z" * 32)
        assert (await env.post(other_key)).status_code == 403
        assert env.puts() == [] and env.status() == "triggered"

    run(scenario)


def test_pagerduty_failure_gives_the_link_back():
    async def scenario(env: Env):
        env.state.set_fault({"mode": "500", "method": "PUT", "count": 1})
        url = env.link("resolve")
        r = await env.post(url, name="Ada")
        assert r.status_code == 502 and "can be used again" in r.text
        assert env.status() == "triggered"
        r2 = await env.post(url, name="Ada")
        assert r2.status_code == 200 and env.status() == "resolved"

    run(scenario, retry=RetryPolicy(max_attempts=1))


def test_unknown_pagerduty_incident_changes_nothing_and_keeps_the_link_usable():
    async def scenario(env: Env):
        url = env.link("acknowledge", incident_key="pagerstream-never-paged-1")
        r = await env.post(url)
        assert r.status_code == 404 and "No PagerDuty incident" in r.text
        assert env.puts() == []
        assert [k async for k in env.redis.scan_iter(match=env.prefix + "*")] == []

    run(scenario)


def test_already_resolved_incident_is_reported_not_changed():
    async def scenario(env: Env):
        await env.pd.resolve_incident("PINC001")
        before = len(env.puts())
        r = await env.post(env.link("acknowledge"))
        assert r.status_code == 200 and "already resolved" in r.text
        assert len(env.puts()) == before

    run(scenario)
