"""Per-service alert-rate series: count triggers in fixed buckets, close buckets as time passes.

Pure: the rates agent feeds it alert times and ticks; closed buckets (empty ones included, since
silence is part of a rate series) go to the anomaly detector.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_GAP_BUCKETS = 120  # after a longer silence only the last buckets are replayed as zeros


@dataclass(frozen=True)
class RateWindow:
    bucket_ms: int
    start: int = -1  # start of the open bucket; -1 before the first alert
    count: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"b": self.bucket_ms, "s": self.start, "c": self.count}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> "RateWindow":
        return cls(d["b"], d["s"], d["c"])


def _floor(ts: int, bucket_ms: int) -> int:
    return ts - ts % bucket_ms


def advance(w: RateWindow, now_ms: int) -> tuple[RateWindow, list[tuple[int, int]]]:
    """Close every bucket that ended at or before `now_ms`; return (window, [(start, count)...])."""
    if w.start < 0 or now_ms < w.start + w.bucket_ms:
        return w, []
    closed = [(w.start, w.count)]
    current = _floor(now_ms, w.bucket_ms)
    empty_from = max(w.start + w.bucket_ms, current - MAX_GAP_BUCKETS * w.bucket_ms)
    closed += [(s, 0) for s in range(empty_from, current, w.bucket_ms)]
    return RateWindow(w.bucket_ms, current, 0), closed


def observe(w: RateWindow, ts_ms: int) -> tuple[RateWindow, list[tuple[int, int]]]:
    """Count one alert at `ts_ms`. A late alert (before the open bucket) counts in the open bucket."""
    if w.start < 0:
        return RateWindow(w.bucket_ms, _floor(ts_ms, w.bucket_ms), 1), []
    w, closed = advance(w, ts_ms)
    return RateWindow(w.bucket_ms, w.start, w.count + 1), closed
