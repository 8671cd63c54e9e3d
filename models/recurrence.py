"""Recurring schedules in the firing times of one alert type.

``detect_schedule(timestamps)`` looks for two kinds of regularity:

* **calendar**: firing times of day concentrate in one window (default +/-15 min) and there is at most
  about one firing a day -> "every day at 02:00 UTC", "every weekday (Mon-Fri) at 09:00 UTC",
  "every Monday at 09:00 UTC"; also "every hour at :05" from the minute of the hour when firings
  are about an hour apart;
* **interval**: the median gap ``g`` between firings, with gaps within +/-``tolerance`` of ``g`` (or of
  2g..4g, i.e. missed firings) counted as consistent -> "every 15 minutes".

Each candidate must pass a concentration test: a one-sided binomial test of "this many firings fall
in the window" against what uniformly random (Poisson) firings would give, Bonferroni-corrected for
choosing the window. Confidence = consistent / (n + 1), a fraction shrunk for small samples, times the
share of days (weeks) covered for calendar schedules. A calendar schedule above ``min_confidence``
wins over an interval; None when neither reaches it. All times are UTC.

``RecurrenceTracker`` keeps the last ``max_events`` firings of up to ``max_keys`` alert types (least
recently seen evicted) and re-detects lazily.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from scipy.stats import binom

VERSION = "recurrence-1"

DAY = 86_400.0
WEEK = 7 * DAY
HOUR = 3_600.0
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class Schedule:
    kind: str  # "daily" | "weekdays" | "weekly" | "hourly" | "interval"
    description: str
    confidence: float
    period_s: float
    offset_s: float | None = None  # seconds after midnight UTC (calendar) or after the hour (hourly)
    weekday: int | None = None  # 0 = Monday, weekly only
    tolerance_s: float = 0.0
    n_events: int = 0
    p_value: float = 1.0

    def matches(self, ts: float | datetime, last: float | None = None) -> bool:
        """Is a firing at ``ts`` on schedule? For plain intervals the previous firing ``last`` is needed."""
        t = _epoch(ts)
        if self.kind == "interval":
            if last is None:
                return False
            k = max(1, round((t - last) / self.period_s))
            return abs((t - last) - k * self.period_s) <= self.tolerance_s
        if self.kind == "hourly":
            return _circ_dist(t % HOUR, self.offset_s or 0.0, HOUR) <= self.tolerance_s
        if _circ_dist(t % DAY, self.offset_s or 0.0, DAY) > self.tolerance_s:
            return False
        wd = _weekday(t)
        if self.kind == "weekly":
            return wd == self.weekday
        if self.kind == "weekdays":
            return wd < 5
        return True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _epoch(ts: float | datetime) -> float:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return ts.timestamp()
    return float(ts)


def _weekday(t: float) -> int:
    # 1970-01-01 was a Thursday (3)
    return int((t // DAY + 3) % 7)


def _circ_dist(a: float, b: float, period: float) -> float:
    d = abs(a - b) % period
    return min(d, period - d)


def _circular_center(x: np.ndarray, period: float, window: float) -> tuple[float, int]:
    """Centre of the densest +/-window arc of points on a circle of length ``period``; returns
    (centre, number of points within +/-window of it). Histogram with window/4 bins, circular moving
    sum, then the centre is refined to the mean offset of the points in the best arc: O(n + bins)."""
    step = max(window / 4.0, 1e-9)
    nb = max(1, math.ceil(period / step))
    hist = np.bincount(np.minimum((x / step).astype(np.int64), nb - 1), minlength=nb)
    half = min(int(window // step), (nb - 1) // 2)
    ext = np.concatenate((hist[-half:], hist, hist[:half])) if half else hist
    csum = np.concatenate(([0], np.cumsum(ext)))
    sums = csum[2 * half + 1:] - csum[: nb]  # sum over bins b-half..b+half, for each bin b
    c0 = (int(np.argmax(sums)) + 0.5) * step
    d = (x - c0 + period / 2) % period - period / 2
    inside = np.abs(d) <= (half + 0.5) * step  # exactly the points counted in the best moving sum
    center = (c0 + float(np.mean(d[inside]))) % period if inside.any() else c0
    dist = np.abs((x - center + period / 2) % period - period / 2)
    return center, int(np.sum(dist <= window))


def _p_value(k: int, n: int, p0: float, tests: float) -> float:
    """P(>= k of n in a window of chance probability p0), Bonferroni over ``tests`` windows."""
    p0 = min(max(p0, 1e-12), 1.0)
    return float(min(1.0, binom.sf(k - 1, n, p0) * max(tests, 1.0)))


def _hhmm(sec: float) -> str:
    m = round(sec / 60.0) % (24 * 60)
    return f"{m // 60:02d}:{m % 60:02d}"


def _human_period(s: float) -> str:
    for unit, size in (("day", DAY), ("hour", HOUR), ("minute", 60.0), ("second", 1.0)):
        if s >= size * 0.999:
            v = s / size
            r = round(v)
            if abs(v - r) <= 0.02 * v:
                return f"every {unit}" if r == 1 else f"every {r} {unit}s"
            return f"every {v:.1f} {unit}s"
    return f"every {s:.2f} seconds"


def detect_schedule(
    timestamps: Iterable[float | int | datetime],
    *,
    min_events: int = 5,
    tolerance: float = 0.1,
    window_s: float = 900.0,
    min_confidence: float = 0.6,
    alpha: float = 1e-3,
    dedupe_s: float = 1.0,
) -> Schedule | None:
    """Find a recurring schedule in firing times (epoch seconds or datetimes, any order).

    ``tolerance``: relative slack on the interval; ``window_s``: half-width of the time-of-day window;
    ``dedupe_s``: firings closer than this are one firing.
    """
    t = np.sort(np.fromiter((_epoch(x) for x in timestamps), dtype=float))
    if t.size:
        t = t[np.concatenate(([True], np.diff(t) > dedupe_s))]
    n = int(t.size)
    if n < min_events:
        return None
    # a calendar schedule says more (time of day, weekday) than the bare interval, so it goes first
    for cand in (_calendar(t, window_s, alpha), _interval(t, tolerance, alpha)):
        if cand is not None and cand.confidence >= min_confidence:
            return cand
    return None


def _interval(t: np.ndarray, tolerance: float, alpha: float) -> Schedule | None:
    gaps = np.diff(t)
    g = float(np.median(gaps))
    if g <= 0:
        return None
    tol = max(tolerance * g, 1.0)
    k = np.clip(np.round(gaps / g), 1, None)
    ok = (np.abs(gaps - k * g) <= tol * np.minimum(k, 2)) & (k <= 4)
    m = int(ok.sum())
    # refine the period on the consistent gaps
    period = float(np.median(gaps[ok] / k[ok])) if m else g
    # chance that an exponential gap (same mean) lands near one of g..4g
    lam = 1.0 / float(np.mean(gaps))
    p0 = sum(math.exp(-lam * (j * g - tol * min(j, 2))) - math.exp(-lam * (j * g + tol * min(j, 2)))
             for j in range(1, 5))
    p = _p_value(m, gaps.size, p0, tests=1.0 / max(2 * tolerance, 1e-3))
    if p > alpha:
        return None
    conf = m / (gaps.size + 1)
    if abs(period - HOUR) <= 0.05 * HOUR:
        # hourly: describe the minute of the hour when it is stable
        center, inside = _circular_center(t % HOUR, HOUR, max(tol, 60.0))
        if inside >= 0.8 * t.size:
            return Schedule("hourly", f"every hour at :{round(center / 60) % 60:02d}", conf, HOUR,
                            offset_s=center, tolerance_s=max(tol, 60.0), n_events=int(t.size), p_value=p)
    return Schedule("interval", _human_period(period), conf, period, tolerance_s=tol,
                    n_events=int(t.size), p_value=p)


def _calendar(t: np.ndarray, window: float, alpha: float) -> Schedule | None:
    days = np.floor(t / DAY).astype(np.int64)
    uniq_days = np.unique(days)
    if uniq_days.size < 3 or t.size > 1.5 * uniq_days.size:  # needs about one firing a day at most
        return None
    center, inside = _circular_center(t % DAY, DAY, window)
    p = _p_value(inside, t.size, 2 * window / DAY, tests=DAY / (2 * window))
    if p > alpha:
        return None
    hit = np.minimum(np.abs(t % DAY - center), DAY - np.abs(t % DAY - center)) <= window
    hit_days = np.unique(days[hit])
    wds = (hit_days + 3) % 7
    span = int(uniq_days[-1] - uniq_days[0]) + 1
    base = inside / (t.size + 1)
    when = _hhmm(center)
    common = {"offset_s": center, "tolerance_s": window, "n_events": int(t.size), "p_value": p}
    counts = np.bincount(wds, minlength=7)
    top = int(np.argmax(counts))
    if span >= 15 and counts[top] >= 0.9 * hit_days.size:
        weeks = span / 7.0
        cover = min(1.0, counts[top] / math.floor(weeks)) if weeks >= 1 else 0.0
        return Schedule("weekly", f"every {WEEKDAYS[top]} at {when} UTC", base * cover, WEEK,
                        weekday=top, **common)
    n_weekend = int(counts[5:].sum())
    all_days = np.arange(uniq_days[0], uniq_days[-1] + 1)
    all_wd = (all_days + 3) % 7
    if n_weekend == 0 and np.sum(all_wd >= 5) >= 2:
        cover = hit_days.size / max(1, int(np.sum(all_wd < 5)))
        return Schedule("weekdays", f"every weekday (Mon-Fri) at {when} UTC", base * min(1.0, cover), DAY,
                        **common)
    cover = hit_days.size / span
    return Schedule("daily", f"every day at {when} UTC", base * min(1.0, cover), DAY, **common)


class RecurrenceTracker:
    """Per-alert-type firing history with bounded memory; schedules are detected lazily and cached."""

    def __init__(self, max_keys: int = 10_000, max_events: int = 256, **detect_kwargs: Any) -> None:
        if max_keys < 1 or max_events < 2:
            raise ValueError("max_keys >= 1 and max_events >= 2")
        self.max_keys = int(max_keys)
        self.max_events = int(max_events)
        self.detect_kwargs = dict(detect_kwargs)
        self._events: OrderedDict[str, list[float]] = OrderedDict()
        self._cache: dict[str, Schedule | None] = {}

    def observe(self, key: str, ts: float | datetime) -> Schedule | None:
        """Record one firing; returns the schedule now detected for ``key`` (or None)."""
        t = _epoch(ts)
        ev = self._events.pop(key, None) or []
        bisect.insort(ev, t)  # late events land in order
        if len(ev) > self.max_events:
            del ev[: len(ev) - self.max_events]
        self._events[key] = ev
        self._cache.pop(key, None)
        while len(self._events) > self.max_keys:
            old, _ = self._events.popitem(last=False)
            self._cache.pop(old, None)
        return self.schedule(key)

    def schedule(self, key: str) -> Schedule | None:
        if key not in self._events:
            return None
        if key not in self._cache:
            self._cache[key] = detect_schedule(self._events[key], **self.detect_kwargs)
        return self._cache[key]

    def expected(self, key: str, ts: float | datetime) -> bool:
        """Would a firing of ``key`` at ``ts`` fit its known schedule?"""
        s = self.schedule(key)
        if s is None:
            return False
        ev = self._events.get(key) or []
        t = _epoch(ts)
        i = bisect.bisect_left(ev, t)
        prev = ev[i - 1] if i > 0 else None
        return s.matches(t, prev)

    def __len__(self) -> int:
        return len(self._events)

    def to_state(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "max_keys": self.max_keys,
            "max_events": self.max_events,
            "detect_kwargs": self.detect_kwargs,
            "events": [[k, v] for k, v in self._events.items()],  # LRU order
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RecurrenceTracker:
        if state.get("version") != VERSION:
            raise ValueError(f"state version {state.get('version')!r} != {VERSION!r}")
        tr = cls(state["max_keys"], state["max_events"], **state.get("detect_kwargs", {}))
        for k, v in state["events"]:
            tr._events[k] = [float(x) for x in v]
        return tr
