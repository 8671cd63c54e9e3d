"""Transient alerts: learn per alert type how often an alert resolves by itself and how fast,
hold back (pause) alerts likely to clear within a short pause, page them if they persist.

Online and causal. Per alert type the model keeps the durations of its last `history` finished
episodes (a bounded ring), plus a fleet ring of the last `pool_history` durations of all types.
For a candidate pause d it estimates

    P(resolves within d | type) = (w * g(d) + s_d) / (w + n)

where n is the type's remembered episodes, s_d of them cleared within d, and g(d) = (1 + S_d) /
(2 + N) is the same fraction over the fleet ring (a Beta prior worth w = `prior_weight` episodes,
so a new type starts from what alerts in general do and moves to its own record).

At episode start the alert is paused for d = `pause_s` (W) when n >= `min_episodes` and the
estimate for W is >= `p_pause`; otherwise it pages at once. With `adaptive=True` the pause is the
shortest remembered duration d <= W whose estimate already reaches `p_pause` (pause as long as
this type usually needs, not longer). A paused alert still open when its pause ends is paged
(`should_page`): persistent alerts are delayed by at most W, never dropped. The median duration in
the evidence is a River `stats.RollingQuantile` over the type's ring (rebuilt on restore).

`features` are accepted for the stream's sake but not used: an online River logistic regression
on episode features (height over threshold, time since the last episode, episodes in the last
24 h, plus this estimate) was tried on NAB and traded windows for noise no better than this.

Every decision carries its evidence, e.g. "alert type X resolved by itself 14 of 16 times within
30 min, median 10 min; paused for 30 min".
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from river import stats

VERSION = "transient-1"


@dataclass(frozen=True)
class Decision:
    """What to do with a freshly started alert. `pause_until` is None when paging now."""

    page_now: bool
    pause_until: float | None
    p_resolve: float
    evidence: dict[str, Any] = field(default_factory=dict)


def _fmt_s(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _TypeState:
    """Bounded per-type memory: last `history` durations, pending pauses, counters."""

    __slots__ = ("durations", "last_end", "last_start", "median", "pending", "seen")

    def __init__(self, history: int) -> None:
        self.durations: deque[float] = deque(maxlen=history)
        self.median = stats.RollingQuantile(0.5, window_size=history)
        self.seen = 0  # finished episodes ever learned (evidence only)
        self.last_start: float | None = None
        self.last_end: float | None = None
        self.pending: dict[float, float] = {}  # paused episode start -> pause end

    def learn(self, duration: float) -> None:
        self.durations.append(duration)
        self.median.update(duration)
        self.seen += 1


class TransientModel:
    """Per-type Beta-Bernoulli estimate of "clears by itself within the pause", with a fleet
    prior; see the module docstring."""

    def __init__(
        self,
        pause_s: float = 1800.0,
        p_pause: float = 0.8,
        min_episodes: int = 3,
        history: int = 32,
        prior_weight: float = 4.0,
        pool_history: int = 256,
        max_types: int = 10_000,
        adaptive: bool = False,
        max_pending: int = 16,
    ) -> None:
        if (
            pause_s <= 0
            or not 0 < p_pause <= 1
            or min_episodes < 0
            or history < 1
            or prior_weight <= 0
            or pool_history < 1
            or max_types < 1
            or max_pending < 1
        ):
            raise ValueError("invalid TransientModel parameters")
        self.pause_s = float(pause_s)
        self.p_pause = float(p_pause)
        self.min_episodes = int(min_episodes)
        self.history = int(history)
        self.prior_weight = float(prior_weight)
        self.pool_history = int(pool_history)
        self.max_types = int(max_types)
        self.adaptive = bool(adaptive)
        self.max_pending = int(max_pending)
        self._pool: deque[float] = deque(maxlen=self.pool_history)
        self._types: OrderedDict[str, _TypeState] = OrderedDict()  # LRU order, oldest first

    # -- bookkeeping -------------------------------------------------------------------------

    def _state(self, alert_type: str) -> _TypeState:
        st = self._types.get(alert_type)
        if st is None:
            st = self._types[alert_type] = _TypeState(self.history)
            while len(self._types) > self.max_types:
                self._types.popitem(last=False)  # forget the least recently used type
        else:
            self._types.move_to_end(alert_type)
        return st

    @property
    def n_types(self) -> int:
        return len(self._types)

    # -- estimates ---------------------------------------------------------------------------

    def fleet_p(self, d: float) -> float:
        """Fraction of recent episodes (all types) that cleared within d, Laplace-smoothed."""
        return (1 + sum(1 for x in self._pool if x <= d)) / (2 + len(self._pool))

    def p_resolve(self, durations: list[float], d: float) -> tuple[float, int]:
        """(P(resolve within d), count of the type's episodes that did)."""
        s = sum(1 for x in durations if x <= d)
        return (self.prior_weight * self.fleet_p(d) + s) / (self.prior_weight + len(durations)), s

    def estimate(self, alert_type: str, pause_s: float | None = None) -> dict[str, Any]:
        """Evidence for one type at pause `pause_s` (default W); no side effects."""
        d = self.pause_s if pause_s is None else float(pause_s)
        st = self._types.get(alert_type)
        durs = list(st.durations) if st else []
        p, s = self.p_resolve(durs, d)
        med = st.median.get() if st and durs else None
        return {
            "alert_type": alert_type,
            "episodes": len(durs),
            "resolved_within_pause": s,
            "pause_s": d,
            "p_resolve": round(p, 4),
            "fleet_p_resolve": round(self.fleet_p(d), 4),
            "median_duration_s": None if med is None else float(med),
            "episodes_seen": st.seen if st else 0,
        }

    def _choose_pause(self, durs: list[float]) -> float | None:
        """The pause to use, or None to page now."""
        if len(durs) < self.min_episodes:
            return None
        cands = sorted({x for x in durs if x < self.pause_s}) if self.adaptive else []
        for d in [*cands, self.pause_s]:
            if self.p_resolve(durs, d)[0] >= self.p_pause:
                return d
        return None

    # -- online API --------------------------------------------------------------------------

    def on_start(self, alert_type: str, ts: float, features: dict[str, Any] | None = None) -> Decision:
        """Decide at episode start: page now, or pause until ts + pause (<= W)."""
        st = self._state(alert_type)
        st.last_start = float(ts)
        durs = list(st.durations)
        pause = self._choose_pause(durs)
        ev = self.estimate(alert_type, pause)
        n, s, med = ev["episodes"], ev["resolved_within_pause"], ev["median_duration_s"]
        head = f"alert type {alert_type} resolved by itself {s} of {n} times within {_fmt_s(ev['pause_s'])}"
        if med is not None:
            head += f", median {_fmt_s(med)}"
        if pause is not None:
            until = float(ts) + pause
            st.pending[float(ts)] = until
            while len(st.pending) > self.max_pending:
                st.pending.pop(next(iter(st.pending)))  # oldest; should_page falls back to W
            ev |= {"action": "pause", "pause_until": until, "message": f"{head}; paused for {_fmt_s(pause)}"}
            return Decision(False, until, ev["p_resolve"], ev)
        if n < self.min_episodes:
            why = f"only {n} finished episodes, need {self.min_episodes}"
        else:
            why = f"P(resolve within {_fmt_s(self.pause_s)}) {ev['p_resolve']:.2f} < {self.p_pause:.2f}"
        ev |= {"action": "page_now", "message": f"{head}; paged now ({why})"}
        return Decision(True, None, ev["p_resolve"], ev)

    def should_page(self, alert_type: str, start_ts: float, now: float, still_open: bool) -> bool:
        """For a paused alert: page once its pause has elapsed and it is still open. A pause the
        model no longer remembers is taken as the longest one, W."""
        st = self._types.get(alert_type)
        key = float(start_ts)
        until = st.pending.get(key) if st is not None else None
        if until is None:
            until = key + self.pause_s
        due = float(now) >= until
        if st is not None and (due or not still_open):
            st.pending.pop(key, None)
        return bool(still_open) and due

    def on_end(
        self, alert_type: str, start_ts: float, end_ts: float, features: dict[str, Any] | None = None
    ) -> None:
        """Learn from a finished episode: its duration (resolved within d <=> duration <= d)."""
        duration = max(0.0, float(end_ts) - float(start_ts))
        st = self._state(alert_type)
        st.learn(duration)
        st.last_end = float(end_ts)
        st.pending.pop(float(start_ts), None)
        self._pool.append(duration)

    @classmethod
    def for_type(cls, alert_type: str, durations: list[float], pool: list[float], seen: int = 0,
                 **params: Any) -> TransientModel:
        """A model holding one type's history and the fleet pool, as the stream keeps them: one
        small table entry per type instead of one big state (processors/intel.py)."""
        m = cls(**params)
        m._pool.extend(float(x) for x in pool[-m.pool_history :])
        st = m._state(alert_type)
        for d in durations[-m.history :]:
            st.durations.append(float(d))
            st.median.update(float(d))
        st.seen = max(int(seen), len(st.durations))
        return m

    # -- persistence -------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        return {
            "pause_s": self.pause_s,
            "p_pause": self.p_pause,
            "min_episodes": self.min_episodes,
            "history": self.history,
            "prior_weight": self.prior_weight,
            "pool_history": self.pool_history,
            "max_types": self.max_types,
            "adaptive": self.adaptive,
            "max_pending": self.max_pending,
        }

    def to_state(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "params": self.params(),
            "pool": list(self._pool),
            "types": [
                {
                    "alert_type": t,
                    "durations": list(st.durations),
                    "seen": st.seen,
                    "last_start": st.last_start,
                    "last_end": st.last_end,
                    "pending": [[k, v] for k, v in st.pending.items()],
                }
                for t, st in self._types.items()
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TransientModel:
        if state.get("version") != VERSION:
            raise ValueError(f"state version {state.get('version')!r} != {VERSION!r}")
        m = cls(**state["params"])
        m._pool.extend(float(x) for x in state["pool"])
        for rec in state["types"]:
            st = m._state(rec["alert_type"])
            for d in rec["durations"][-m.history :]:
                st.durations.append(float(d))
                st.median.update(float(d))
            st.seen = int(rec["seen"])
            st.last_start = rec["last_start"]
            st.last_end = rec["last_end"]
            st.pending = {float(k): float(v) for k, v in rec["pending"][-m.max_pending :]}
        return m
