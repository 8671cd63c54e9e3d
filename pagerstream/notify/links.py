"""Signed, expiring one-click action links ("Acknowledge" / "Resolve" from an email or a ticket).

A link is `<base_url>?i=<incident>&a=<action>&k=<PagerDuty incident_key>&e=<expiry>&n=<nonce>&s=<sig>`
where `sig` = HMAC-SHA256(key, JSON ["v1", i, a, k, e, n]) in url-safe base64. Everything the handler
acts on is covered by the signature, so changing any parameter (another incident, another action,
a later expiry) makes the link invalid (403).

Key material (`link_keys`): the dedicated secret PAGERSTREAM_ACTION_LINK_KEY when it is set (any
string of at least 32 characters); otherwise a key derived with HKDF-SHA256 from each Fernet key of
ENCRYPTION_KEY (info "pagerstream/action-links/v1"), so the link key is never the encryption key
itself. The first key signs, every key verifies: rotating ENCRYPTION_KEY (prepending a new key)
keeps links already sent working until they expire.

The handler (`link_handler`):
* GET/HEAD never act: mail scanners and link previewers fetch links. A GET shows what the link would
  do and a confirmation button (a POST form).
* POST performs the action once. The nonce is claimed in Redis with SET NX; a second use gets "already
  used at <time> by <who>" and changes nothing. If PagerDuty cannot be reached, the claim is released
  so the same link can be tried again.
* An expired link explains that it expired (410) and changes nothing; a tampered one gets 403.

The action itself goes through the PagerDuty REST client: the incident is found by `incident_key`
(pagerstream's pd_dedup_key) and acknowledged or resolved (`act_on_pagerduty`, also used by the
Jira and ServiceNow "resolved over there" paths).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web

log = logging.getLogger("pagerstream.notify.links")

ACTIONS = ("acknowledge", "resolve")
VERSION = "v1"
HKDF_INFO = b"pagerstream/action-links/v1"
KEY_ENV = "PAGERSTREAM_ACTION_LINK_KEY"
DEFAULT_TTL_S = 24 * 3600
DEFAULT_PREFIX = "pagerstream:actionlink:"
RECORD_GRACE_S = 7 * 24 * 3600  # how long a used nonce is remembered after the link's expiry
PARAMS = ("i", "a", "k", "e", "n", "s")


# ------------------------------------------------------------------------------------------------
# keys
# ------------------------------------------------------------------------------------------------


class LinkKeyError(ValueError):
    """No usable key material for action links."""


def derive_link_key(fernet_key: str) -> bytes:
    """HKDF-SHA256 over one Fernet key (its 32 decoded bytes) -> a 32-byte HMAC key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    try:
        raw = base64.urlsafe_b64decode(fernet_key.strip().encode())
    except (ValueError, TypeError) as e:
        raise LinkKeyError("ENCRYPTION_KEY entry is not url-safe base64") from e
    if len(raw) != 32:
        raise LinkKeyError("ENCRYPTION_KEY entry is not a 32-byte Fernet key")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(raw)


def link_keys(env: Mapping[str, str] | None = None) -> list[bytes]:
    """Signing key first, then the older keys that still verify. See the module doc for the rule."""
    env = os.environ if env is None else env
    dedicated = (env.get(KEY_ENV) or "").strip()
    if dedicated:
        keys = [k.strip() for k in dedicated.split(",") if k.strip()]
        if any(len(k) < 32 for k in keys):
            raise LinkKeyError(f"{KEY_ENV} entries must be at least 32 characters")
        return [k.encode() for k in keys]
    enc = (env.get("ENCRYPTION_KEY") or "").strip()
    if not enc:
        raise LinkKeyError(f"set {KEY_ENV} or ENCRYPTION_KEY to sign action links")
    return [derive_link_key(k) for k in enc.split(",") if k.strip()]


def _as_keys(key: bytes | str | Sequence[bytes | str]) -> list[bytes]:
    items = [key] if isinstance(key, (bytes, str)) else list(key)
    out = [k.encode() if isinstance(k, str) else bytes(k) for k in items]
    if not out or any(len(k) < 16 for k in out):
        raise LinkKeyError("an action-link key must be at least 16 bytes")
    return out


# ------------------------------------------------------------------------------------------------
# links
# ------------------------------------------------------------------------------------------------


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _message(incident_id: str, action: str, pd_incident_key: str, expiry: int, nonce: str) -> bytes:
    # a JSON array is an unambiguous encoding of the fields (no separator tricks)
    return json.dumps(
        [VERSION, incident_id, action, pd_incident_key, int(expiry), nonce],
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


def _sign(key: bytes, *fields: Any) -> str:
    return _b64(hmac.new(key, _message(*fields), hashlib.sha256).digest())


def make_link(
    base_url: str,
    incident_id: str,
    action: str,
    pd_incident_key: str,
    ttl_s: float,
    key: bytes | str | Sequence[bytes | str],
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> str:
    """A signed URL that acknowledges/resolves `pd_incident_key` in PagerDuty until now + ttl_s."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
    if not incident_id or not pd_incident_key:
        raise ValueError("incident_id and pd_incident_key are required")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    signing = _as_keys(key)[0]
    expiry = int((time.time() if now is None else now) + ttl_s)
    nonce = nonce or _b64(secrets.token_bytes(16))
    sig = _sign(signing, incident_id, action, pd_incident_key, expiry, nonce)
    query = urlencode(
        {"i": incident_id, "a": action, "k": pd_incident_key, "e": str(expiry), "n": nonce, "s": sig}
    )
    parts = urlsplit(base_url)
    q = f"{parts.query}&{query}" if parts.query else query
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", q, ""))


@dataclass(frozen=True)
class LinkClaims:
    incident_id: str
    action: str
    pd_incident_key: str
    expiry: int
    nonce: str


class TamperedLink(ValueError):
    """The parameters are missing or the signature does not verify with any key."""


def verify_link(params: Mapping[str, str], key: bytes | str | Sequence[bytes | str]) -> LinkClaims:
    """The link's claims if its signature verifies (expiry is NOT checked here)."""
    try:
        i, a, k, e, n, s = (params[p] for p in PARAMS)
        expiry = int(e)
    except (KeyError, ValueError, TypeError) as exc:
        raise TamperedLink("incomplete link") from exc
    if a not in ACTIONS or not i or not k or not n:
        raise TamperedLink("malformed link")
    ok = False
    for kk in _as_keys(key):  # compare against every key, no early exit on the first match
        ok |= hmac.compare_digest(_sign(kk, i, a, k, expiry, n), s)
    if not ok:
        raise TamperedLink("signature does not verify")
    return LinkClaims(i, a, k, expiry, n)


def parse_link(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


class ActionLinks:
    """For ChannelContext.action_link: `links(incident_id, action, pd_incident_key) -> URL`.

    ChannelContext declares (incident_id, action); the handler must know which PagerDuty incident to
    act on, so the PagerDuty incident_key (IncidentEvent.pd_dedup_key) is a third argument. Called with
    two arguments it assumes pagerstream's grouped-incident key "pagerstream-<incident_id>"; for
    incidents of services with grouping "none" (key = the alert's dedup_key) such a link finds no
    PagerDuty incident and changes nothing, so callers should pass the key."""

    def __init__(
        self,
        base_url: str,
        keys: bytes | str | Sequence[bytes | str],
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url
        self.keys = _as_keys(keys)
        self.ttl_s = ttl_s
        self.clock = clock

    def __call__(self, incident_id: str, action: str, pd_incident_key: str | None = None) -> str:
        pd_incident_key = pd_incident_key or f"pagerstream-{incident_id}"
        return make_link(
            self.base_url, incident_id, action, pd_incident_key, self.ttl_s, self.keys, now=self.clock()
        )


# ------------------------------------------------------------------------------------------------
# acting on PagerDuty
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionOutcome:
    status: str  # done | already | not_found
    message: str
    pd_incident_id: str | None = None


async def act_on_pagerduty(
    pd: Any, pd_incident_key: str, action: str, *, resolution: str | None = None
) -> ActionOutcome:
    """Acknowledge or resolve the PagerDuty incident whose incident_key is `pd_incident_key`.

    Raises the REST client's errors for anything other than "not found" / "already in that state",
    so callers can tell a transient failure (PagerDutyTransportError, 5xx, 429) from a final answer."""
    from pagerstream.pagerduty.rest import InvalidInputError

    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
    found = await pd.list_all("/incidents", {"incident_key": pd_incident_key, "date_range": "all"})
    found = [i for i in found if i.get("incident_key") == pd_incident_key]
    if not found:
        return ActionOutcome("not_found", "PagerDuty has no incident for this alert (yet).")
    open_ = [i for i in found if i.get("status") != "resolved"]
    if not open_:
        return ActionOutcome("already", "The PagerDuty incident is already resolved.", found[0].get("id"))
    inc = open_[0]
    if action == "acknowledge" and inc.get("status") == "acknowledged":
        return ActionOutcome("already", "The PagerDuty incident is already acknowledged.", inc.get("id"))
    try:
        if action == "acknowledge":
            await pd.acknowledge_incident(inc["id"])
        else:
            await pd.resolve_incident(inc["id"], resolution=resolution)
    except InvalidInputError as e:
        if e.code == 1001:  # Incident Already Resolved (raced with someone else)
            return ActionOutcome("already", "The PagerDuty incident is already resolved.", inc.get("id"))
        raise
    verb = "acknowledged" if action == "acknowledge" else "resolved"
    return ActionOutcome(
        "done", f"PagerDuty incident {inc.get('incident_number') or inc['id']} {verb}.", inc["id"]
    )


# ------------------------------------------------------------------------------------------------
# HTTP handler
# ------------------------------------------------------------------------------------------------

_RELEASE_LUA = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
)
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'",
}
_VERB = {"acknowledge": "Acknowledge", "resolve": "Resolve"}


def _ts(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _page(status: int, title: str, body_html: str) -> web.Response:
    doc = (
        '<!doctype html><html><head><meta charset="utf-8"><meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:40em;"
        "margin:3em auto;padding:0 1em}button{font-size:1.1em;padding:.4em 1.2em}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body_html}</body></html>"
    )
    return web.Response(status=status, text=doc, content_type="text/html", headers=_SECURITY_HEADERS)


def _describe(c: LinkClaims) -> str:
    return (
        f"<p>Incident <code>{html.escape(c.incident_id)}</code> "
        f"(PagerDuty incident key <code>{html.escape(c.pd_incident_key)}</code>).</p>"
    )


def _used_page(c: LinkClaims, rec: dict) -> web.Response:
    if rec.get("state") == "pending":
        return _page(
            409,
            "This link is being used right now",
            _describe(c) + f"<p>It was opened at {html.escape(_ts(rec.get('at', 0)))} by "
            f"{html.escape(str(rec.get('by', 'someone')))} and the action is in progress. "
            "Nothing more was done.</p>",
        )
    return _page(
        409,
        "This link was already used",
        _describe(c) + f"<p>Already used at {html.escape(_ts(rec.get('at', 0)))} by "
        f"{html.escape(str(rec.get('by', 'someone')))}: {html.escape(str(rec.get('result', '')))}</p>"
        "<p>Nothing was changed this time.</p>",
    )


def link_handler(
    *,
    keys: bytes | str | Sequence[bytes | str],
    redis: Any,
    pagerduty: Any,
    prefix: str = DEFAULT_PREFIX,
    clock: Callable[[], float] = time.time,
    trust_forwarded_for: bool = False,
    record_grace_s: int = RECORD_GRACE_S,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler for GET/HEAD (confirmation page, never acts) and POST (acts once).

    `redis`: a redis.asyncio client; `pagerduty`: a PagerDutyREST (or anything with list_all,
    acknowledge_incident, resolve_incident). Register it for GET and POST on the path that
    `make_link`'s base_url points at (see `add_link_routes`)."""
    key_list = _as_keys(keys)

    def who(request: web.Request, name: str) -> str:
        ip = request.remote or "unknown address"
        if trust_forwarded_for and request.headers.get("X-Forwarded-For"):
            ip = request.headers["X-Forwarded-For"].split(",")[0].strip()
        name = " ".join(name.split())[:80]
        return f"{name} ({ip})" if name else f"a visitor from {ip}"

    async def existing(c: LinkClaims) -> dict | None:
        raw = await redis.get(prefix + c.nonce)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return {"at": 0, "by": "unknown", "result": "recorded"}

    async def handler(request: web.Request) -> web.Response:
        if request.method == "POST":
            form = await request.post()
            params = {p: str(form[p]) for p in PARAMS if p in form} or dict(request.query)
            name = str(form.get("name", ""))
        elif request.method in ("GET", "HEAD"):
            params, name = dict(request.query), ""
        else:
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "POST"])
        try:
            c = verify_link(params, key_list)
        except TamperedLink as e:
            log.warning("action link refused (%s) from %s", e, request.remote)
            return _page(
                403,
                "This link is not valid",
                "<p>The link was changed or is incomplete, so it cannot be used. "
                "Use the link exactly as it was sent.</p>",
            )
        rec = await existing(c)
        if rec is not None:
            return _used_page(c, rec)
        now = clock()
        if now >= c.expiry:
            return _page(
                410,
                "This link has expired",
                _describe(c) + f"<p>It could be used until {html.escape(_ts(c.expiry))}. "
                "Nothing was changed. Open the incident in PagerDuty instead.</p>",
            )
        if request.method != "POST":
            hidden = "".join(
                f'<input type="hidden" name="{p}" value="{html.escape(params[p])}">' for p in PARAMS
            )
            return _page(
                200,
                f"{_VERB[c.action]} this incident?",
                _describe(c) + f"<p>The link is valid until {html.escape(_ts(c.expiry))} and "
                "works once.</p>"
                f'<form method="post" action="{html.escape(request.path)}">{hidden}'
                "<p><label>Your name (recorded with the action): "
                '<input type="text" name="name" maxlength="80"></label></p>'
                f'<p><button type="submit">{_VERB[c.action]}</button></p></form>',
            )
        # claim the nonce: exactly one POST gets past this point
        by = who(request, name)
        token = secrets.token_hex(8)
        claim = json.dumps(
            {
                "at": now,
                "by": by,
                "state": "pending",
                "action": c.action,
                "incident_id": c.incident_id,
                "claim": token,
            }
        )
        ttl = max(1, int(c.expiry - now) + record_grace_s)
        if not await redis.set(prefix + c.nonce, claim, nx=True, ex=ttl):
            return _used_page(c, await existing(c) or {"at": now, "by": "someone", "result": ""})
        try:
            out = await act_on_pagerduty(
                pagerduty,
                c.pd_incident_key,
                c.action,
                resolution=f"Resolved from a pagerstream link by {by}" if c.action == "resolve" else None,
            )
        except Exception as e:  # noqa: BLE001 - transient or unexpected: give the link back for a retry
            await redis.eval(_RELEASE_LUA, 1, prefix + c.nonce, claim)
            log.warning("action link %s for %s failed: %s", c.action, c.incident_id, type(e).__name__)
            return _page(
                502,
                "PagerDuty could not be reached",
                _describe(c) + "<p>Nothing was changed and the link can be used again. "
                "Try again in a minute, or open the incident in PagerDuty.</p>",
            )
        if out.status == "not_found":
            await redis.eval(_RELEASE_LUA, 1, prefix + c.nonce, claim)
            return _page(
                404,
                "No PagerDuty incident (yet)",
                _describe(c) + f"<p>{html.escape(out.message)} Nothing was changed; the link "
                "can be used again.</p>",
            )
        done = json.dumps(
            {
                "at": now,
                "by": by,
                "state": "used",
                "action": c.action,
                "incident_id": c.incident_id,
                "result": out.message,
                "pd_incident_id": out.pd_incident_id,
            }
        )
        await redis.set(prefix + c.nonce, done, xx=True, keepttl=True)
        log.info("action link: %s %s by link (%s)", c.action, c.incident_id, out.status)
        return _page(
            200,
            "Done" if out.status == "done" else "Nothing to do",
            _describe(c) + f"<p>{html.escape(out.message)}</p>",
        )

    return handler


def add_link_routes(
    app: web.Application, path: str, handler: Callable[[web.Request], Awaitable[web.Response]]
) -> None:
    """GET (and HEAD) + POST on `path`."""
    app.router.add_get(path, handler)
    app.router.add_post(path, handler)
