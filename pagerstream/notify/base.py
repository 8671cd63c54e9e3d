"""The shape every notification channel has (pagerstream/notify/<channel>.py).

A channel turns one Notification (an incident change for one destination) into provider calls and
answers with a DeliveryResult. It never retries, sleeps or rate-limits: the delivery stage
(pagerstream/notify/delivery.py) does that for every channel alike, from the result's fields. A
channel keeps per-incident provider references (a Slack thread ts, a Jira issue key, a ServiceNow
sys_id) through `ctx.refs`, so the next change of the same incident updates the same thread,
issue or record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx


@dataclass(frozen=True)
class Destination:
    """One configured place to send to (from the notifications config / services catalog)."""

    name: str  # unique, e.g. "slack-payments"
    channel: str  # slack_webhook | slack_api | teams | email | webhook | jira | servicenow
    config: dict[str, Any] = field(default_factory=dict)  # non-secret settings (url, channel id, project...)
    secret_ref: str | None = None  # name of the encrypted secret holding the credentials
    rate_per_second: float = 1.0
    burst: int = 5


@dataclass(frozen=True)
class Notification:
    """One incident change for one destination. `key` is the idempotency key: a replay or a
    rebalance that recomputes the same notification gets the same key."""

    key: str  # f"{incident_id}#{version}@{destination.name}"
    incident: dict[str, Any]  # the IncidentEvent record (schemas/incident_event.avsc), latest version
    destination: Destination
    bundled: tuple[dict[str, Any], ...] = ()  # earlier IncidentEvents folded into this message (bursts)
    attempt: int = 0

    @property
    def incident_id(self) -> str:
        return str(self.incident["incident_id"])


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status: int | None = None  # provider HTTP status (or SMTP code)
    retry_after: float | None = None  # seconds, from Retry-After (or the provider's equivalent)
    permanent: bool = False  # retrying cannot help (4xx other than 408/429, bad config)
    answer: str = ""  # the provider's answer, truncated, no secrets
    external_ref: str | None = None  # thread ts / issue key / sys_id created or used


class RefStore(Protocol):
    """Per (incident, destination) provider references, shared by all workers (Redis)."""

    async def get(self, incident_id: str, destination: str) -> str | None: ...
    async def set(self, incident_id: str, destination: str, ref: str) -> None: ...


@dataclass
class ChannelContext:
    http: httpx.AsyncClient  # outbound client whose transport refuses non-allow-listed private targets
    secret: Callable[[str], dict[str, Any]]  # secret_ref -> decrypted credentials (never log them)
    render: Callable[[str, Notification], str]  # (template name, notification) -> text (sandboxed Jinja2)
    refs: RefStore
    # (incident_id, action, pd_dedup_key) -> signed expiring URL (pagerstream/notify/links.py)
    action_link: Callable[[str, str, str], str] | None = None
    smtp: Any = None  # email only: connection factory/settings


class Channel(Protocol):
    kind: str

    async def send(self, n: Notification, ctx: ChannelContext) -> DeliveryResult: ...


def classify_http(resp: httpx.Response) -> DeliveryResult:
    """A provider's HTTP answer -> DeliveryResult (Retry-After in seconds or an HTTP date)."""
    import time
    from email.utils import parsedate_to_datetime

    ra: float | None = None
    h = resp.headers.get("retry-after")
    if h:
        try:
            ra = max(0.0, float(h))
        except ValueError:
            try:
                ra = max(0.0, parsedate_to_datetime(h).timestamp() - time.time())
            except (TypeError, ValueError):
                ra = None
    s = resp.status_code
    ok = 200 <= s < 300
    permanent = 400 <= s < 500 and s not in (408, 429)
    return DeliveryResult(ok=ok, status=s, retry_after=ra, permanent=permanent, answer=resp.text[:500])


SendFn = Callable[[Notification, ChannelContext], Awaitable[DeliveryResult]]


def service_base_url(cfg: dict[str, Any], key: str, error: type[Exception]) -> str:
    """The configured base URL of a ticketing service (Jira base_url, ServiceNow instance_url):
    absolute, and https unless the destination allows http (credentials go with every request)."""
    from urllib.parse import urlsplit

    base = str(cfg.get(key) or "").rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise error(f"{key} must be an absolute URL")
    if parts.scheme == "http" and not cfg.get("allow_http"):
        raise error(f"{key} must use https (credentials are sent with every request)")
    return base
