"""Streaming anomaly detection for per-service alert rates and any metric stream.

``RateAnomalyDetector.update(ts, value) -> Score`` is causal (uses only past points), O(1) per point
and keeps a bounded state. It watches three views of the stream:

* ``value``: the raw value;
* ``level``: the mean of the last ``level_window`` points (level shifts, sustained rises/drops);
* ``hour_of_day``: the value minus a learnt per-hour-of-day level (a drop where the series is usually
  high, a rise at an unusual hour).

For each view it learns a soft envelope ``[lo, hi]``: the extremes seen so far, relaxing slowly
(``decay`` per point) towards a slow running mean, so old excursions are forgotten. A point that
leaves a view's envelope gets a deviation ``excess / envelope width``. The deviations of the views are
summed (``d``), squashed to ``d / (1 + d)`` and, because only the first detection of an event matters,
the reported score is the *rise* of that value over the largest value of the previous ``refractory``
points. Scores are 0 for most points and jump towards 1 on a new, large excursion.

On the NAB development split the NAB-optimal thresholds were about 0.04 (standard profile) and
0.10 (fewer false positives); ``python -m pagerstream.models.eval.anomaly`` re-measures them.

``NonLearningRangeRule`` is the baseline: "the value left the range seen so far".
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

VERSION = "rate-anomaly/1"

_BIG = 1e6  # deviation reported when an envelope has zero width (a flat series moved)


@dataclass(frozen=True)
class Score:
    score: float
    reason: dict[str, Any] = field(default_factory=dict)


class _Envelope:
    """Soft extremes of a signal: ``hi``/``lo`` follow new extremes at once and relax towards the
    running mean by ``1 - decay`` per point."""

    __slots__ = ("alpha", "decay", "hi", "lo", "mean")

    def __init__(self, decay: float, alpha: float) -> None:
        self.decay = decay
        self.alpha = alpha
        self.hi: float | None = None
        self.lo = 0.0
        self.mean = 0.0

    def update(self, x: float) -> tuple[float, float, float]:
        """Deviation of ``x`` from the envelope (0 inside), then learn ``x``. Returns (dev, lo, hi)."""
        hi = self.hi
        if hi is None:
            self.hi = self.lo = self.mean = x
            return 0.0, x, x
        lo = self.lo
        if x > hi:
            excess = x - hi
        elif x < lo:
            excess = lo - x
        else:
            excess = 0.0
        m = self.mean + self.alpha * (x - self.mean)
        self.mean = m
        d = self.decay
        nhi = m + (hi - m) * d
        nlo = m + (lo - m) * d
        self.hi = max(nhi, x)
        self.lo = min(nlo, x)
        if excess == 0.0:
            return 0.0, lo, hi
        width = hi - lo
        if width <= 1e-12 * (abs(x) + abs(hi)):
            return _BIG, lo, hi
        return excess / width, lo, hi

    def to_state(self) -> list | None:
        return None if self.hi is None else [self.hi, self.lo, self.mean]

    def load(self, s: list | None) -> None:
        if s is None:
            self.hi = None
        else:
            self.hi, self.lo, self.mean = (float(v) for v in s)


class RateAnomalyDetector:
    """Online anomaly detector for one series (see the module doc). Same hyperparameters for every
    series; state is O(level_window + refractory + 86400 / slot_seconds)."""

    PARAMS = ("decay", "mean_alpha", "level_window", "slot_seconds", "slot_alpha", "slot_min", "refractory",
              "warmup")

    def __init__(
        self,
        decay: float = 0.9999,
        mean_alpha: float = 0.001,
        level_window: int = 12,
        slot_seconds: int = 3600,
        slot_alpha: float = 0.3,
        slot_min: int = 2,
        refractory: int = 20,
        warmup: int = 30,
    ) -> None:
        if not (0.0 < decay <= 1.0 and 0.0 < mean_alpha <= 1.0 and 0.0 < slot_alpha <= 1.0):
            raise ValueError("decay, mean_alpha and slot_alpha must be in (0, 1]")
        if level_window < 1 or refractory < 0 or warmup < 0 or slot_min < 0:
            raise ValueError("window sizes must be >= 0 (level_window >= 1)")
        if not 60 <= slot_seconds <= 86400:
            raise ValueError("slot_seconds must be in [60, 86400]")
        self.decay = decay
        self.mean_alpha = mean_alpha
        self.level_window = int(level_window)
        self.slot_seconds = int(slot_seconds)
        self.slot_alpha = slot_alpha
        self.slot_min = int(slot_min)
        self.refractory = int(refractory)
        self.warmup = int(warmup)  # points learnt before any score is reported
        self._n_slots = max(1, 86400 // self.slot_seconds)
        self._env = {k: _Envelope(decay, mean_alpha) for k in ("value", "level", "hour_of_day")}
        self._buf: deque[float] = deque(maxlen=self.level_window)
        self._recent: deque[float] = deque(maxlen=max(1, self.refractory))
        self._slots: dict[int, list] = {}  # slot -> [learnt level, points seen]
        self.n = 0

    # ----------------------------------------------------------------------------------- scoring

    def update(self, ts: float, value: float) -> Score:
        x = float(value)
        if not math.isfinite(x):
            return Score(0.0, {"component": None, "note": "non-finite value ignored"})
        self.n += 1
        env = self._env
        devs: dict[str, float] = {}
        ranges: dict[str, tuple[float, float]] = {}

        dv, lo, hi = env["value"].update(x)
        devs["value"] = dv
        ranges["value"] = (lo, hi)

        buf = self._buf
        buf.append(x)
        if len(buf) == buf.maxlen:
            level = sum(buf) / len(buf)  # exact each time: a running sum would drift
            d, lo, hi = env["level"].update(level)
            devs["level"] = d
            ranges["level"] = (lo, hi)

        slot = int(ts // self.slot_seconds) % self._n_slots
        st = self._slots.get(slot)
        if st is None:
            self._slots[slot] = [x, 1]
        else:
            expected = st[0]
            if st[1] >= self.slot_min:
                d, lo, hi = env["hour_of_day"].update(x - expected)
                devs["hour_of_day"] = d
                ranges["hour_of_day"] = (expected + lo, expected + hi)
            st[0] = expected + self.slot_alpha * (x - expected)
            if st[1] < 1_000_000:
                st[1] += 1

        total = sum(devs.values())
        raw = total / (1.0 + total)
        if self.refractory:
            recent = self._recent
            prev = max(recent) if recent else 0.0
            recent.append(raw)
            score = raw - prev if raw > prev else 0.0
        else:
            score = raw

        top = max(devs, key=devs.__getitem__) if total > 0.0 else None
        reason: dict[str, Any] = {"component": top, "observed": x}
        if self.n <= self.warmup:
            reason["suppressed"] = "warmup"
            return Score(0.0, reason)
        if top is not None:
            lo, hi = ranges[top]
            reason["expected"] = [lo, hi]
            reason["deviation"] = round(min(devs[top], _BIG), 4)
            reason["components"] = {k: round(min(v, _BIG), 4) for k, v in devs.items() if v > 0.0}
            reason["raw"] = round(raw, 4)
            if score == 0.0:
                reason["suppressed"] = "refractory"
        return Score(min(1.0, max(0.0, score)), reason)

    # ------------------------------------------------------------------------------------- state

    def to_state(self) -> dict:
        return {
            "version": VERSION,
            "params": {k: getattr(self, k) for k in self.PARAMS},
            "n": self.n,
            "envelopes": {k: e.to_state() for k, e in self._env.items()},
            "buf": list(self._buf),
            "recent": list(self._recent),
            "slots": {str(k): v[:] for k, v in self._slots.items()},
        }

    @classmethod
    def from_state(cls, d: dict) -> RateAnomalyDetector:
        if d.get("version") != VERSION:
            raise ValueError(f"state version {d.get('version')!r} != {VERSION!r}")
        det = cls(**d["params"])
        det.n = int(d["n"])
        for k, s in d["envelopes"].items():
            det._env[k].load(s)
        for v in d["buf"]:
            det._buf.append(float(v))
        for v in d["recent"]:
            det._recent.append(float(v))
        det._slots = {int(k): [float(v[0]), int(v[1])] for k, v in d["slots"].items()}
        return det


class NonLearningRangeRule:
    """Baseline: score > 0 only when the value leaves the [min, max] seen so far (causal, no decay,
    no learning beyond the two extremes). Score 0.5 + 0.5 * excess / range, capped at 1."""

    VERSION = "range-rule/1"

    def __init__(self) -> None:
        self.lo: float | None = None
        self.hi: float | None = None

    def update(self, ts: float, value: float) -> Score:
        x = float(value)
        if not math.isfinite(x):
            return Score(0.0, {"rule": "range", "note": "non-finite value ignored"})
        if self.lo is None:
            self.lo = self.hi = x
            return Score(0.0, {"rule": "range", "expected": [x, x], "observed": x})
        lo, hi = self.lo, self.hi
        excess = max(0.0, x - hi, lo - x)
        self.lo, self.hi = min(lo, x), max(hi, x)
        reason = {"rule": "range", "expected": [lo, hi], "observed": x}
        if excess == 0.0:
            return Score(0.0, reason)
        width = hi - lo
        score = 1.0 if width <= 0 else min(1.0, 0.5 + 0.5 * excess / width)
        reason["deviation"] = excess
        return Score(score, reason)

    def to_state(self) -> dict:
        return {"version": self.VERSION, "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_state(cls, d: dict) -> NonLearningRangeRule:
        r = cls()
        r.lo, r.hi = d["lo"], d["hi"]
        return r
