"""Async client for PagerDuty's REST API v2 (api.pagerduty.com / api.eu.pagerduty.com), on httpx.

What it takes care of, per the official contracts in shared/contracts/pagerduty/:

* auth: `Authorization: Token token=<account or user API key>` or `Authorization: Bearer <OAuth token>`,
  always with `Accept: application/vnd.pagerduty+json;version=2`. The token lives in a `Secret` and is
  attached per request by an `httpx.Auth` flow, so it is in no client default, repr, log line or error.
* `From: <email>`: sent on exactly the operations whose OpenAPI definition declares the `From` header as
  required (`FROM_HEADER_REQUIRED`, checked against the spec by the tests). With an API token and no
  from-address such a call fails before anything is sent; OAuth user tokens already name their user.
* regions: US and EU base URLs, or an override (PAGERDUTY_API_URL) that must pass the SSRF guard in
  pagerstream.netguard unless private targets were allowed explicitly.
* pagination: classic (limit/offset/more) with PagerDuty's 10,000-record cap handled by stopping cleanly
  with a warning (or `PaginationCapError` on request), and cursor-based (limit/cursor/next_cursor) for the
  endpoints the spec marks so (`CURSOR_PAGINATED_PATHS`).
* rate limits: `ratelimit-limit/-remaining/-reset` headers feed a pacer that spreads the rest of the window's
  budget once less than a fifth of it is left and waits for the reset at 0; a 429 waits for
  `ratelimit-reset` (or backs off with jitter when the headers are absent).
* retries: 429, 408, 5xx, timeouts and connection errors, with capped exponential backoff and jitter, for
  idempotent methods; POSTs are retried only when PagerDuty cannot have acted on them (429, 503, failure
  to connect). Other 4xx are never retried. Error bodies `{"error": {"code", "message", "errors"}}` become
  `PagerDutyAPIError` subclasses carrying the status, code, message and details.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import random
import re
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping
from urllib.parse import quote, urlparse

import httpx

from pagerstream.config import ConfigError, Secret
from pagerstream.netguard import outbound_url_problem

log = logging.getLogger("pagerstream.pagerduty.rest")

US_API_URL = "https://api.pagerduty.com"
EU_API_URL = "https://api.eu.pagerduty.com"
REGION_URLS = {"us": US_API_URL, "eu": EU_API_URL}
ACCEPT = "application/vnd.pagerduty+json;version=2"
USER_AGENT = "pagerstream/0.1 (+rest-api-v2)"

DEFAULT_PAGE_SIZE = 100  # "cannot exceed 100" (developer docs, Pagination)
CLASSIC_PAGINATION_CAP = 10_000  # offset + limit may not exceed this (developer docs, Pagination)

# Operations whose OpenAPI definition declares the `From` header parameter as required (the spec's
# `from_header` component). tests/unit/test_pd_rest.py re-derives this set from the spec.
FROM_HEADER_REQUIRED: frozenset[tuple[str, str]] = frozenset({
    ("PUT", "/incidents"),
    ("POST", "/incidents"),
    ("PUT", "/incidents/{id}"),
    ("PUT", "/incidents/{id}/alerts"),
    ("PUT", "/incidents/{id}/alerts/{alert_id}"),
    ("PUT", "/incidents/{id}/merge"),
    ("POST", "/incidents/{id}/notes"),
    ("PUT", "/incidents/{id}/notes/{note_id}"),
    ("POST", "/incidents/{id}/snooze"),
    ("POST", "/incidents/{id}/status_updates"),
    ("PUT", "/log_entries/{id}/channel"),
    ("POST", "/maintenance_windows"),
    ("POST", "/users"),
})

# GET operations that take a `cursor` query parameter in the spec (cursor-based pagination); every other
# list endpoint uses classic limit/offset pagination. Also re-derived from the spec by the tests.
CURSOR_PAGINATED_PATHS: frozenset[str] = frozenset({
    "/audit/records",
    "/automation_actions/actions",
    "/automation_actions/runners",
    "/enrichment/schemas/{schema_id}/records",
    "/escalation_policies/{id}/audit/records",
    "/incident_workflows/actions",
    "/incident_workflows/triggers",
    "/ip_allow_lists/{id}/audit/records",
    "/schedules/{id}/audit/records",
    "/services/{id}/audit/records",
    "/teams/{id}/audit/records",
    "/users/{id}/audit/records",
    "/users/{id}/oauth_delegations",
    "/v3/schedules/{id}/audit/records",
    "/workflows/integrations",
    "/workflows/integrations/connections",
    "/workflows/integrations/{integration_id}/connections",
    "/recommendations/event_orchestrations/rules",
})

# Webhook subscription filter types (OpenAPI: webhook_subscription.filter.type).
FILTER_TYPES = {"account": "account_reference", "service": "service_reference", "team": "team_reference"}


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------

class PagerDutyError(Exception):
    """Base class of everything this module raises."""


class PagerDutyConfigError(PagerDutyError, ValueError):
    """The client cannot make this call as configured (no credentials, no From address, bad URL)."""


class PaginationCapError(PagerDutyError):
    """Classic pagination reached PagerDuty's 10,000-record cap with more records left."""


class PaginationCapWarning(UserWarning):
    """Classic pagination stopped at PagerDuty's 10,000-record cap; the result is incomplete."""


class PagerDutyTransportError(PagerDutyError):
    """No HTTP answer (timeout, refused or dropped connection), after the allowed retries."""

    def __init__(self, method: str, path: str, reason: str, attempts: int) -> None:
        self.method, self.path, self.reason, self.attempts = method, path, reason, attempts
        super().__init__(f"PagerDuty {method} {path}: {reason} (after {attempts} attempt(s))")


class PagerDutyAPIError(PagerDutyError):
    """PagerDuty answered with an error status. `code`, `message` and `errors` come from its error body."""

    def __init__(self, status: int, method: str, path: str, *, code: int | None = None,
                 message: str | None = None, errors: Iterable[str] = (), request_id: str | None = None,
                 attempts: int = 1) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.code = code
        self.message = message
        self.errors = list(errors)
        self.request_id = request_id
        self.attempts = attempts
        text = f"PagerDuty {method} {path} -> HTTP {status}"
        if code is not None:
            text += f" (error {code})"
        if message:
            text += f": {message}"
        if self.errors:
            text += " [" + "; ".join(self.errors) + "]"
        if attempts > 1:
            text += f" after {attempts} attempts"
        super().__init__(text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code}, message={self.message!r})"


class InvalidInputError(PagerDutyAPIError):
    """400: the arguments are wrong; retrying the same request will not work."""


class AuthenticationError(PagerDutyAPIError):
    """401: missing, malformed or unknown credentials."""


class PaymentRequiredError(PagerDutyAPIError):
    """402: the account lacks an ability this call needs."""


class ForbiddenError(PagerDutyAPIError):
    """403: the credentials are valid but may not do this (e.g. a read-only key writing)."""


class NotFoundError(PagerDutyAPIError):
    """404: no such resource."""


class ConflictError(PagerDutyAPIError):
    """409: the request conflicts with the current state."""


class RateLimitedError(PagerDutyAPIError):
    """429 that outlasted the retries."""


class ServerError(PagerDutyAPIError):
    """5xx (or 408) that outlasted the retries, or a non-idempotent call that could not be retried."""


_STATUS_ERRORS: dict[int, type[PagerDutyAPIError]] = {
    400: InvalidInputError, 401: AuthenticationError, 402: PaymentRequiredError, 403: ForbiddenError,
    404: NotFoundError, 408: ServerError, 409: ConflictError, 429: RateLimitedError,
}


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------

_API_KEY = re.compile(r"[A-Za-z0-9_+\-]{20,}")  # the same check as pagerstream.config
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TRUE = {"1", "true", "yes"}
_FALSE = {"", "0", "false", "no"}


@dataclass(frozen=True)
class RestSettings:
    """REST API settings read from the environment (pagerstream.config has no REST URL/region/From)."""

    api_key: Secret = field(default_factory=lambda: Secret(""))
    user_token: Secret = field(default_factory=lambda: Secret(""))
    region: str = "us"
    api_url: str = US_API_URL
    url_overridden: bool = False
    from_email: str | None = None
    allow_private: bool = False
    timeout_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RestSettings":
        """Read PAGERDUTY_API_KEY, PAGERDUTY_USER_TOKEN, PAGERDUTY_REGION, PAGERDUTY_API_URL,
        PAGERDUTY_FROM_EMAIL, PAGERSTREAM_ALLOW_PRIVATE_PD_URL and PAGERSTREAM_PD_TIMEOUT.
        All problems are reported at once as `ConfigError`; no problem text repeats a secret."""
        env = os.environ if env is None else env
        problems: list[tuple[str, str]] = []
        kw: dict[str, Any] = {}

        def get(name: str) -> str:
            return (env.get(name) or "").strip()

        if v := get("PAGERDUTY_API_KEY"):
            if _API_KEY.fullmatch(v):
                kw["api_key"] = Secret(v)
            else:
                problems.append(("PAGERDUTY_API_KEY", "expected a REST API token (20+ characters of [A-Za-z0-9_+-])"))
        if v := get("PAGERDUTY_USER_TOKEN"):
            if len(v) >= 20 and not any(c.isspace() for c in v):
                kw["user_token"] = Secret(v)
            else:
                problems.append(("PAGERDUTY_USER_TOKEN", "expected an OAuth bearer token (20+ characters, no spaces)"))

        allow = get("PAGERSTREAM_ALLOW_PRIVATE_PD_URL").lower()
        if allow in _TRUE:
            kw["allow_private"] = True
        elif allow not in _FALSE:
            problems.append(("PAGERSTREAM_ALLOW_PRIVATE_PD_URL", "expected true or false"))
        region = get("PAGERDUTY_REGION").lower() or "us"
        if region not in REGION_URLS:
            problems.append(("PAGERDUTY_REGION", f"expected one of {', '.join(sorted(REGION_URLS))}"))
        else:
            kw["region"] = region
            kw["api_url"] = REGION_URLS[region]
        if v := get("PAGERDUTY_API_URL"):
            why = base_url_problem(v, allow_private=bool(kw.get("allow_private")))
            if why:
                problems.append(("PAGERDUTY_API_URL", why))
            else:
                kw["api_url"] = v.rstrip("/")
                kw["url_overridden"] = True
        if v := get("PAGERDUTY_FROM_EMAIL"):
            if _EMAIL.match(v):
                kw["from_email"] = v
            else:
                problems.append(("PAGERDUTY_FROM_EMAIL", "expected the email address of a PagerDuty user"))
        if v := get("PAGERSTREAM_PD_TIMEOUT"):
            try:
                t = float(v)
                if not 0.1 <= t <= 120:
                    raise ValueError
                kw["timeout_s"] = t
            except ValueError:
                problems.append(("PAGERSTREAM_PD_TIMEOUT", "expected a number between 0.1 and 120"))
        if problems:
            raise ConfigError(problems)
        return cls(**kw)

    @property
    def has_credentials(self) -> bool:
        return bool(self.api_key) or bool(self.user_token)


def base_url_problem(url: str, *, allow_private: bool) -> str | None:
    """None if `url` may be used as the REST API base URL, else why not (shape + SSRF guard)."""
    u = urlparse(url)
    if u.scheme not in ("https", "http") or not u.hostname or u.query or u.fragment:
        return "expected a base URL like https://api.pagerduty.com (no query or fragment)"
    if url.rstrip("/") in REGION_URLS.values():
        return None
    return outbound_url_problem(url, allow_private=allow_private)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def path_matches(template: str, path: str) -> bool:
    """True if a concrete path (`/incidents/PX1`) fits an OpenAPI template (`/incidents/{id}`)."""
    t = template.strip("/").split("/")
    p = path.split("?", 1)[0].strip("/").split("/")
    if len(t) != len(p):
        return False
    return all((a.startswith("{") and a.endswith("}") and b != "") or a == b for a, b in zip(t, p))


def requires_from(method: str, path: str) -> bool:
    m = method.upper()
    return any(m == tm and path_matches(t, path) for tm, t in FROM_HEADER_REQUIRED)


def is_cursor_paginated(path: str) -> bool:
    return any(path_matches(t, path) for t in CURSOR_PAGINATED_PATHS)


def _seg(value: str) -> str:
    """An id as one path segment (no '/', '..' or '?' can escape it)."""
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty id")
    return quote(value, safe="")


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (params or {}).items():
        if v is None:
            continue
        if isinstance(v, (list, tuple, set, frozenset)):
            vals = [x for x in v if x is not None]
            if not vals:
                continue
            out[k] = vals
        elif isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, datetime):
            out[k] = _iso(v)
        else:
            out[k] = v
    return out


def _header_number(headers: httpx.Headers, name: str) -> float | None:
    v = headers.get(name)
    if v is None:
        return None
    try:
        x = float(v.strip())
    except ValueError:
        return None
    return x if math.isfinite(x) and x >= 0 else None


class _PDAuth(httpx.Auth):
    """Adds the Authorization header to each request; the credential is never stored on the client."""

    def __init__(self, scheme: str, secret: Secret) -> None:
        self._scheme = scheme
        self._secret = secret

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._scheme == "bearer":
            request.headers["Authorization"] = f"Bearer {self._secret.get()}"
        else:
            request.headers["Authorization"] = f"Token token={self._secret.get()}"
        yield request

    def __repr__(self) -> str:
        return f"_PDAuth({self._scheme!r}, {self._secret!r})"


# ------------------------------------------------------------------------------------------------
# rate limits and retries
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5        # attempts in total, first one included
    base_delay_s: float = 0.5    # first backoff step (doubles per attempt)
    max_delay_s: float = 30.0    # cap of one backoff step
    rate_limit_floor_s: float = 1.0  # minimum pause after a 429 without headers
    max_total_wait_s: float = 120.0  # give up instead of sleeping past this in one call

    def backoff(self, attempt: int, rng: random.Random, floor: float = 0.0) -> float:
        """'Equal jitter': half of the capped exponential step is fixed, half is random."""
        step = min(self.max_delay_s, max(floor, self.base_delay_s) * (2 ** max(0, attempt - 1)))
        return step / 2 + rng.uniform(0, step / 2)


class RatePacer:
    """Client-side pacing from PagerDuty's `ratelimit-*` response headers.

    After each response it knows the window's limit, what is left and when the window resets. Before
    each request `delay()` says how long to wait: nothing while more than `slow_below` of the window
    is left; below that, requests spaced by (time left in the window) / (requests left + 1), measured
    from the previous request, so the budget lasts until the reset; at 0 remaining, until the reset. A 429 blocks until its reset / backoff.
    One pacer is shared by all calls of a client (PagerDuty limits per token); `acquire()` is serialized
    so that concurrent callers queue instead of all firing when the budget frees up.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, *,
                 slow_below: float = 0.2, max_wait_s: float = 120.0) -> None:
        self.clock = clock
        self.sleep = sleep
        self.slow_below = slow_below
        self.max_wait_s = max_wait_s
        self.limit: float | None = None
        self.remaining: float | None = None
        self.reset_at: float | None = None
        self.blocked_until = 0.0
        self.last_sent: float | None = None
        self.waits: list[float] = []  # every pause taken by acquire() (for metrics and tests)
        self._lock = asyncio.Lock()

    def observe(self, headers: httpx.Headers) -> None:
        limit = _header_number(headers, "ratelimit-limit")
        remaining = _header_number(headers, "ratelimit-remaining")
        reset = _header_number(headers, "ratelimit-reset")
        if remaining is None or reset is None:
            return
        self.limit = limit
        self.remaining = remaining
        self.reset_at = self.clock() + min(reset, self.max_wait_s)

    def block_for(self, seconds: float) -> None:
        self.blocked_until = max(self.blocked_until, self.clock() + min(max(0.0, seconds), self.max_wait_s))

    def delay(self) -> float:
        now = self.clock()
        wait = max(0.0, self.blocked_until - now)
        if self.remaining is None or self.reset_at is None:
            return wait
        left = self.reset_at - now
        if left <= 0:  # the window the headers described is over
            return wait
        if self.remaining <= 0:
            return max(wait, left)
        if self.limit and self.remaining < self.limit * self.slow_below:
            # spread what is left over the rest of the window, using it up just before the reset
            spacing = left / (self.remaining + 1)
            since_last = now - self.last_sent if self.last_sent is not None else spacing
            wait = max(wait, spacing - since_last)
        return min(wait, self.max_wait_s)

    async def acquire(self) -> float:
        """Wait as `delay()` says, count the request against the remaining budget, return the pause."""
        async with self._lock:
            wait = self.delay()
            if wait > 0:
                self.waits.append(wait)
                await self.sleep(wait)
            now = self.clock()
            if self.reset_at is not None and now >= self.reset_at:
                self.remaining = self.limit  # a new window started; the next response says for sure
                self.reset_at = None
            if self.remaining is not None:
                self.remaining = max(0.0, self.remaining - 1)
            self.last_sent = now
            return wait


@dataclass
class CreatedWebhook:
    """A new webhook subscription and its signing secret (PagerDuty shows the secret only once)."""

    subscription: dict
    secret: Secret

    @property
    def id(self) -> str:
        return self.subscription["id"]


# ------------------------------------------------------------------------------------------------
# the client
# ------------------------------------------------------------------------------------------------

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class PagerDutyREST:
    """Async PagerDuty REST API v2 client. Use as `async with PagerDutyREST(...) as pd:` or call aclose().

    `clock`, `sleep` and `rng` are injectable so that pacing and backoff can be tested without waiting;
    `transport` lets a test or a caller supply an httpx transport.
    """

    def __init__(self, *, api_key: Secret | str | None = None, user_token: Secret | str | None = None,
                 base_url: str | None = None, region: str = "us", from_email: str | None = None,
                 allow_private: bool = False, timeout_s: float = 30.0, retry: RetryPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rng: random.Random | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 pacer: RatePacer | None = None) -> None:
        key = api_key if isinstance(api_key, Secret) else Secret(api_key or "")
        tok = user_token if isinstance(user_token, Secret) else Secret(user_token or "")
        if tok:  # an OAuth token names its user and is scoped; prefer it when both are given
            self._auth_kind, self._secret = "bearer", tok
        elif key:
            self._auth_kind, self._secret = "token", key
        else:
            raise PagerDutyConfigError("no PagerDuty credentials: set PAGERDUTY_API_KEY or PAGERDUTY_USER_TOKEN")
        if base_url:
            why = base_url_problem(base_url, allow_private=allow_private)
            if why:
                raise PagerDutyConfigError(f"PagerDuty API URL refused: {why}")
            self.base_url = base_url.rstrip("/")
        else:
            if region.lower() not in REGION_URLS:
                raise PagerDutyConfigError(f"unknown PagerDuty region {region!r} (us or eu)")
            self.base_url = REGION_URLS[region.lower()]
        if from_email is not None and not _EMAIL.match(from_email):
            raise PagerDutyConfigError("from_email must be the email address of a PagerDuty user")
        self.from_email = from_email
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.pacer = pacer or RatePacer(clock, sleep)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(timeout_s), follow_redirects=False,
            auth=_PDAuth(self._auth_kind, self._secret), transport=transport,
            headers={"Accept": ACCEPT, "Content-Type": "application/json", "User-Agent": USER_AGENT},
        )

    @classmethod
    def from_settings(cls, s: RestSettings, **kw: Any) -> "PagerDutyREST":
        return cls(api_key=s.api_key, user_token=s.user_token, base_url=s.api_url if s.url_overridden else None,
                   region=s.region, from_email=s.from_email, allow_private=s.allow_private,
                   timeout_s=s.timeout_s, **kw)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kw: Any) -> "PagerDutyREST":
        return cls.from_settings(RestSettings.from_env(env), **kw)

    @property
    def auth_kind(self) -> str:
        """'token' (API key) or 'bearer' (OAuth)."""
        return self._auth_kind

    def __repr__(self) -> str:
        return f"PagerDutyREST(base_url={self.base_url!r}, auth={self._auth_kind!r}, from_email={self.from_email!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "PagerDutyREST":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- core ------------------------------------------------------------------------------------

    def _scrub(self, text: str | None) -> str | None:
        """Belt and braces: never let the credential through in text that came back from the server."""
        if text is None:
            return None
        s = self._secret.get()
        return text.replace(s, "****") if s and s in text else text

    def _api_error(self, resp: httpx.Response, method: str, path: str, attempts: int) -> PagerDutyAPIError:
        code = message = None
        errors: list[str] = []
        try:
            body = resp.json()
        except ValueError:
            body = None
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            if isinstance(err.get("code"), int):
                code = err["code"]
            if err.get("message") is not None:
                message = self._scrub(str(err["message"])[:500])
            if isinstance(err.get("errors"), list):
                errors = [self._scrub(str(e)[:500]) or "" for e in err["errors"][:20]]
        elif resp.text:
            message = self._scrub(resp.text.strip()[:200]) or None
        status = resp.status_code
        cls = _STATUS_ERRORS.get(status) or (ServerError if status >= 500 else PagerDutyAPIError)
        return cls(status, method, path, code=code, message=message, errors=errors,
                   request_id=resp.headers.get("x-request-id"), attempts=attempts)

    def _retry_after(self, resp: httpx.Response) -> float | None:
        reset = _header_number(resp.headers, "ratelimit-reset")
        if reset is not None:
            return reset
        ra = resp.headers.get("retry-after")
        if ra:
            try:
                return max(0.0, float(ra))
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(ra)
                    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
                except (TypeError, ValueError):
                    return None
        return None

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      json: Any = None, idempotent: bool | None = None) -> Any:
        """One API call with pacing and retries. Returns the decoded JSON body (None for 204)."""
        method = method.upper()
        if not path.startswith("/"):
            raise ValueError("path must start with '/' (relative to the API base URL)")
        headers: dict[str, str] = {}
        if requires_from(method, path):
            if self.from_email:
                headers["From"] = self.from_email
            elif self._auth_kind == "token":
                raise PagerDutyConfigError(
                    f"{method} {path} needs a From header (the email of a PagerDuty user) when an API "
                    "token is used: set PAGERDUTY_FROM_EMAIL")
        safe = method in _IDEMPOTENT if idempotent is None else idempotent
        q = _clean_params(params)
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            waited += await self.pacer.acquire()
            try:
                resp = await self._http.request(method, path, params=q or None, json=json,
                                                headers=headers or None)
            except httpx.TransportError as e:
                connect_failed = isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
                reason = ("timeout" if isinstance(e, httpx.TimeoutException) else "connection error") + \
                    f" ({type(e).__name__})"
                pause = self.retry.backoff(attempt, self.rng)
                if (safe or connect_failed) and attempt < self.retry.max_attempts \
                        and waited + pause <= self.retry.max_total_wait_s:
                    log.warning("PagerDuty %s %s: %s; retry %d/%d in %.2fs", method, path, reason,
                                attempt, self.retry.max_attempts - 1, pause)
                    self.pacer.block_for(pause)
                    continue
                raise PagerDutyTransportError(method, path, reason, attempt) from None
            self.pacer.observe(resp.headers)
            status = resp.status_code
            if status < 400:
                if status == 204 or not resp.content:
                    return None
                try:
                    return resp.json()
                except ValueError:
                    raise PagerDutyError(f"PagerDuty {method} {path} -> HTTP {status} with a non-JSON body") from None
            if status == 429:
                hinted = self._retry_after(resp)
                pause = hinted + self.rng.uniform(0, 0.25) if hinted is not None else \
                    self.retry.backoff(attempt, self.rng, floor=self.retry.rate_limit_floor_s)
                retryable = True
            else:
                pause = self.retry.backoff(attempt, self.rng)
                retryable = (status >= 500 or status == 408) and (safe or status == 503)
            if retryable and attempt < self.retry.max_attempts and waited + pause <= self.retry.max_total_wait_s:
                log.warning("PagerDuty %s %s -> HTTP %d; retry %d/%d in %.2fs", method, path, status,
                            attempt, self.retry.max_attempts - 1, pause)
                self.pacer.block_for(pause)
                continue
            raise self._api_error(resp, method, path, attempt)

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, json: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        return await self.request("POST", path, json=json, params=params)

    async def put(self, path: str, json: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        return await self.request("PUT", path, json=json, params=params)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)

    # -- pagination ------------------------------------------------------------------------------

    @staticmethod
    def _wrapper_of(path: str) -> str:
        return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    async def iter_classic(self, path: str, params: Mapping[str, Any] | None = None, *,
                           wrapper: str | None = None, page_size: int = DEFAULT_PAGE_SIZE,
                           on_cap: str = "warn") -> AsyncIterator[dict]:
        """Yield every record of a classic (limit/offset/more) list endpoint.

        PagerDuty refuses offset + limit > 10,000. The last page is shrunk to end exactly at the cap;
        if `more` is still true there, iteration stops: `on_cap="warn"` (default) logs and issues a
        `PaginationCapWarning`, `"raise"` raises `PaginationCapError` after yielding the 10,000 records.
        Narrow the query with filters (or time windows) to get the rest.
        """
        if on_cap not in ("warn", "raise"):
            raise ValueError("on_cap must be 'warn' or 'raise'")
        wrapper = wrapper or self._wrapper_of(path)
        limit = max(1, min(int(page_size), DEFAULT_PAGE_SIZE))
        base = dict(params or {})
        offset = int(base.pop("offset", 0) or 0)
        base.pop("limit", None)
        while True:
            this_limit = min(limit, CLASSIC_PAGINATION_CAP - offset)
            if this_limit <= 0:
                msg = (f"PagerDuty {path}: stopped at the classic pagination cap of {CLASSIC_PAGINATION_CAP} "
                       "records (offset + limit); more records exist. Narrow the query with filters.")
                if on_cap == "raise":
                    raise PaginationCapError(msg)
                log.warning("%s", msg)
                warnings.warn(msg, PaginationCapWarning, stacklevel=2)
                return
            body = await self.get(path, {**base, "limit": this_limit, "offset": offset})
            items = body.get(wrapper) if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise PagerDutyError(f"PagerDuty {path}: response has no '{wrapper}' list")
            for item in items:
                yield item
            if not body.get("more"):
                return
            if not items:
                log.warning("PagerDuty %s: 'more' is true on an empty page at offset %d; stopping", path, offset)
                return
            offset += len(items)

    async def iter_cursor(self, path: str, params: Mapping[str, Any] | None = None, *,
                          wrapper: str | None = None, page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[dict]:
        """Yield every record of a cursor-paginated endpoint (limit/cursor, response `next_cursor`)."""
        wrapper = wrapper or self._wrapper_of(path)
        base = dict(params or {})
        base.pop("offset", None)
        cursor = base.pop("cursor", None)
        seen: set[str] = set()
        while True:
            q = {**base, "limit": max(1, int(page_size))}
            if cursor:
                q["cursor"] = cursor
            body = await self.get(path, q)
            items = body.get(wrapper) if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise PagerDutyError(f"PagerDuty {path}: response has no '{wrapper}' list")
            for item in items:
                yield item
            cursor = body.get("next_cursor")
            if not cursor:
                return
            if cursor in seen:
                raise PagerDutyError(f"PagerDuty {path}: next_cursor repeated; stopping to avoid a loop")
            seen.add(cursor)

    def iter_all(self, path: str, params: Mapping[str, Any] | None = None, **kw: Any) -> AsyncIterator[dict]:
        """Cursor or classic iteration, whichever the spec uses for `path`."""
        if is_cursor_paginated(path):
            kw.pop("on_cap", None)
            return self.iter_cursor(path, params, **kw)
        return self.iter_classic(path, params, **kw)

    async def list_all(self, path: str, params: Mapping[str, Any] | None = None, **kw: Any) -> list[dict]:
        return [x async for x in self.iter_all(path, params, **kw)]

    async def _get_one(self, path: str, wrapper: str, params: Mapping[str, Any] | None = None) -> dict:
        body = await self.get(path, params)
        if not isinstance(body, dict) or not isinstance(body.get(wrapper), dict):
            raise PagerDutyError(f"PagerDuty {path}: response has no '{wrapper}' object")
        return body[wrapper]

    # -- configuration objects -------------------------------------------------------------------

    async def list_services(self, *, query: str | None = None, team_ids: Iterable[str] | None = None,
                            include: Iterable[str] | None = None, sort_by: str | None = None) -> list[dict]:
        return await self.list_all("/services", {"query": query, "team_ids[]": team_ids,
                                                 "include[]": include, "sort_by": sort_by})

    async def get_service(self, service_id: str, *, include: Iterable[str] | None = None) -> dict:
        return await self._get_one(f"/services/{_seg(service_id)}", "service", {"include[]": include})

    async def list_escalation_policies(self, *, query: str | None = None, user_ids: Iterable[str] | None = None,
                                       team_ids: Iterable[str] | None = None,
                                       include: Iterable[str] | None = None) -> list[dict]:
        return await self.list_all("/escalation_policies", {"query": query, "user_ids[]": user_ids,
                                                            "team_ids[]": team_ids, "include[]": include})

    async def get_escalation_policy(self, policy_id: str, *, include: Iterable[str] | None = None) -> dict:
        return await self._get_one(f"/escalation_policies/{_seg(policy_id)}", "escalation_policy",
                                   {"include[]": include})

    async def list_schedules(self, *, query: str | None = None, since: datetime | str | None = None,
                             until: datetime | str | None = None, team_ids: Iterable[str] | None = None,
                             include: Iterable[str] | None = None, time_zone: str | None = None) -> list[dict]:
        return await self.list_all("/schedules", {"query": query, "since": _iso(since), "until": _iso(until),
                                                  "team_ids[]": team_ids, "include[]": include,
                                                  "time_zone": time_zone})

    async def get_schedule(self, schedule_id: str, *, since: datetime | str | None = None,
                           until: datetime | str | None = None, time_zone: str | None = None) -> dict:
        return await self._get_one(f"/schedules/{_seg(schedule_id)}", "schedule",
                                   {"since": _iso(since), "until": _iso(until), "time_zone": time_zone})

    async def list_oncalls(self, *, escalation_policy_ids: Iterable[str] | None = None,
                           schedule_ids: Iterable[str] | None = None, user_ids: Iterable[str] | None = None,
                           since: datetime | str | None = None, until: datetime | str | None = None,
                           earliest: bool | None = None, include: Iterable[str] | None = None,
                           time_zone: str | None = None) -> list[dict]:
        """On-call entries; without since/until PagerDuty answers who is on call now."""
        return await self.list_all("/oncalls", {
            "escalation_policy_ids[]": escalation_policy_ids, "schedule_ids[]": schedule_ids,
            "user_ids[]": user_ids, "since": _iso(since), "until": _iso(until), "earliest": earliest,
            "include[]": include, "time_zone": time_zone})

    async def list_users(self, *, query: str | None = None, team_ids: Iterable[str] | None = None,
                         include: Iterable[str] | None = None) -> list[dict]:
        return await self.list_all("/users", {"query": query, "team_ids[]": team_ids, "include[]": include})

    async def get_user(self, user_id: str, *, include: Iterable[str] | None = None) -> dict:
        return await self._get_one(f"/users/{_seg(user_id)}", "user", {"include[]": include})

    async def list_teams(self, *, query: str | None = None) -> list[dict]:
        return await self.list_all("/teams", {"query": query})

    async def get_team(self, team_id: str) -> dict:
        return await self._get_one(f"/teams/{_seg(team_id)}", "team")

    async def list_audit_records(self, *, since: datetime | str | None = None,
                                 until: datetime | str | None = None) -> list[dict]:
        """Account audit trail (cursor-paginated)."""
        return await self.list_all("/audit/records", {"since": _iso(since), "until": _iso(until)})

    # -- incidents (never cached) ----------------------------------------------------------------

    async def get_incident(self, incident_id: str, *, include: Iterable[str] | None = None) -> dict:
        return await self._get_one(f"/incidents/{_seg(incident_id)}", "incident", {"include[]": include})

    async def update_incident(self, incident_id: str, changes: Mapping[str, Any]) -> dict:
        """PUT /incidents/{id} with `{"incident": {"type": "incident_reference", **changes}}`."""
        body = {"incident": {"type": "incident_reference", **changes}}
        out = await self.put(f"/incidents/{_seg(incident_id)}", body)
        return out["incident"]

    async def update_incident_status(self, incident_id: str, status: str, *,
                                     resolution: str | None = None) -> dict:
        if status not in ("acknowledged", "resolved"):
            raise ValueError("status must be 'acknowledged' or 'resolved'")
        changes: dict[str, Any] = {"status": status}
        if resolution is not None:
            if status != "resolved":
                raise ValueError("a resolution goes with status 'resolved'")
            changes["resolution"] = resolution
        return await self.update_incident(incident_id, changes)

    async def acknowledge_incident(self, incident_id: str) -> dict:
        return await self.update_incident_status(incident_id, "acknowledged")

    async def resolve_incident(self, incident_id: str, *, resolution: str | None = None) -> dict:
        return await self.update_incident_status(incident_id, "resolved", resolution=resolution)

    async def reassign_incident(self, incident_id: str, *, user_ids: Iterable[str] | None = None,
                                escalation_level: int | None = None,
                                escalation_policy_id: str | None = None) -> dict:
        """Reassign to users (`assignments`), to a level of the current policy (`escalation_level`) or
        to another escalation policy. Exactly one of the three."""
        users = list(user_ids or [])
        given = sum(x is not None and x != [] for x in (users, escalation_level, escalation_policy_id))
        if given != 1:
            raise ValueError("give exactly one of user_ids, escalation_level, escalation_policy_id")
        changes: dict[str, Any] = {}
        if users:
            changes["assignments"] = [{"assignee": {"id": u, "type": "user_reference"}} for u in users]
        elif escalation_level is not None:
            if isinstance(escalation_level, bool) or not isinstance(escalation_level, int) or escalation_level < 1:
                raise ValueError("escalation_level must be a positive integer")
            changes["escalation_level"] = escalation_level
        else:
            changes["escalation_policy"] = {"id": escalation_policy_id, "type": "escalation_policy_reference"}
        return await self.update_incident(incident_id, changes)

    async def create_incident_note(self, incident_id: str, content: str) -> dict:
        if not content:
            raise ValueError("note content must not be empty")
        out = await self.post(f"/incidents/{_seg(incident_id)}/notes", {"note": {"content": content}})
        return out["note"]

    # -- webhook subscriptions -------------------------------------------------------------------

    async def create_webhook_subscription(self, url: str, *, filter_type: str, events: Iterable[str],
                                          filter_id: str | None = None, description: str | None = None,
                                          custom_headers: Mapping[str, str] | None = None,
                                          active: bool = True) -> CreatedWebhook:
        """Create a v3 webhook subscription. `filter_type`: account, service or team (or the
        *_reference form). The signing secret comes back once, as a `Secret`; the returned
        subscription dict has it removed."""
        ftype = FILTER_TYPES.get(filter_type, filter_type)
        if ftype not in FILTER_TYPES.values():
            raise ValueError(f"filter_type must be one of {', '.join(FILTER_TYPES)}")
        if ftype != "account_reference" and not filter_id:
            raise ValueError(f"a {filter_type} filter needs filter_id")
        evs = list(dict.fromkeys(events))
        if not evs:
            raise ValueError("give at least one event type")
        delivery: dict[str, Any] = {"type": "http_delivery_method", "url": url}
        if custom_headers:
            delivery["custom_headers"] = [{"name": k, "value": v} for k, v in custom_headers.items()]
        flt: dict[str, Any] = {"type": ftype}
        if filter_id:
            flt["id"] = filter_id
        sub: dict[str, Any] = {"type": "webhook_subscription", "delivery_method": delivery, "events": evs,
                               "filter": flt, "active": active}
        if description:
            sub["description"] = description
        out = await self.post("/webhook_subscriptions", {"webhook_subscription": sub})
        created = out["webhook_subscription"]
        dm = created.get("delivery_method") or {}
        secret = Secret(dm.pop("secret", None) or "")
        return CreatedWebhook(created, secret)

    async def list_webhook_subscriptions(self, *, filter_type: str | None = None,
                                         filter_id: str | None = None) -> list[dict]:
        if filter_type is not None and filter_type not in FILTER_TYPES:
            raise ValueError(f"filter_type must be one of {', '.join(FILTER_TYPES)}")
        return await self.list_all("/webhook_subscriptions", {"filter_type": filter_type, "filter_id": filter_id})

    async def get_webhook_subscription(self, subscription_id: str) -> dict:
        return await self._get_one(f"/webhook_subscriptions/{_seg(subscription_id)}", "webhook_subscription")

    async def delete_webhook_subscription(self, subscription_id: str) -> None:
        await self.delete(f"/webhook_subscriptions/{_seg(subscription_id)}")
