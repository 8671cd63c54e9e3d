"""Online grouping of related alerts into incidents (beyond exact dedup).

One pass, bounded memory, roughly O(1) work per alert. Open groups are indexed by
``(entity, type)``, by entity (host, ip, or other configured label values) and by alert type, so an
alert never scans all open groups. It tries, in order:

0. ``same_entity_active_burst``: a group on the same entity that is firing >= ``burst_rate``
   alerts a second right now (a scanner) takes every alert of that entity while it lasts;
1. ``same_entity_type``: the open group that already holds this type on this entity;
2. ``same_entity_similar_type``: among the open groups of the entity (at most
   ``max_groups_per_entity``), the one with the most similar alert text, if token Jaccard >=
   ``similarity``;
3. ``same_entity_burst``: the entity's most recently active group, if it fired within the last
   ``cooccur_s`` seconds (different alert types raised together by one cause);
4. ``same_type_other_entity``: the group that saw this exact type on another entity within the
   last ``cross_entity_s`` seconds (one scan or update hitting many machines);
5. otherwise a new group (``new``).

Every group has its own silence tolerance,
``clamp(gap_factor * (age + prior_gap_s) / count, min_gap_s, max_gap_s)``, i.e. ``gap_factor``
times its mean inter-arrival time, with one pseudo-gap of ``prior_gap_s`` so that a young group is
not closed too early. A dense burst (hundreds of alerts a second) thus closes after ``min_gap_s``
of quiet once it has about ``gap_factor * prior_gap_s / min_gap_s`` alerts (3,600 by default; a
smaller burst tolerates proportionally longer pauses), so two scanner runs a few seconds apart stay
apart, while a slow background stream
(logins every minute) stays one group across quiet spells. A silent group stops matching as soon as
its tolerance has passed, and ``expire()`` drops it from memory. Nothing outlives ``max_gap_s`` of
silence, and ``max_open_groups`` caps the table (least recently active groups close first).

Text similarity is exact token Jaccard on the normalised type code and alert name (``W-Acc-400`` +
"Web server 400 error code." -> {w, acc, 400, wazuh, web, server, error, code}). Only the few open
groups of one entity are compared, with pair results cached, so MinHash/LSH would not be any cheaper.

The model never sees ground-truth labels. ``to_state()`` / ``from_state()`` round-trip through
JSON (caches are rebuilt).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

VERSION = "correlate-1.0.0"

# Rule names as they appear in Assignment.reason["rule"].
RULE_ACTIVE = "same_entity_active_burst"
RULE_SAME = "same_entity_type"
RULE_SIMILAR = "same_entity_similar_type"
RULE_BURST = "same_entity_burst"
RULE_CROSS = "same_type_other_entity"
RULE_NEW = "new"

_RULE_TEXT = {
    RULE_ACTIVE: "same {entity} as a burst of {rate}+ alerts/s still firing",
    RULE_SAME: "same {entity} + same type within {gap:.0f}s",
    RULE_SIMILAR: "same {entity} + similar alert text (jaccard {sim:.2f}) within {gap:.0f}s",
    RULE_BURST: "same {entity}, other type, within {cooccur:g}s of the group's last alert",
    RULE_CROSS: "same type on another {entity} within {cross:g}s",
    RULE_NEW: "no open group matched",
}

_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    {"a", "an", "the", "of", "in", "on", "to", "for", "from", "and", "or", "is", "are", "was", "by", "with"}
    | {"this", "that", "same", "alert"}
)
_NEG_INF = float("-inf")


def text_tokens(type_code: str, name: str) -> frozenset[str]:
    """Token set of an alert type: type-code parts + words of the name, lower-cased, crude plural strip."""
    out = set()
    for tok in _TOKEN.findall(f"{type_code} {name}".lower()):
        if tok in _STOP:
            continue
        if len(tok) > 3 and tok.endswith("s") and not tok.endswith("ss"):
            tok = tok[:-1]
        out.add(tok)
    return frozenset(out)


def jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


@dataclass(slots=True)
class Assignment:
    group_id: int
    reason: dict[str, Any]
    new_group: bool


@dataclass(slots=True)
class _Group:
    gid: int
    first: float
    last: float
    count: int = 0
    gap: float = 0.0  # current silence tolerance, seconds
    sec: float = _NEG_INF  # current one-second bucket
    sec_n: int = 0  # alerts of the group in that bucket
    burst_t: float = _NEG_INF  # last time the group fired >= burst_rate alerts within one second
    entities: dict[str, int] = field(default_factory=dict)  # entity -> alerts (capped)
    types: dict[str, int] = field(default_factory=dict)  # type -> alerts (capped)
    rules: dict[str, int] = field(default_factory=dict)  # rule -> alerts
    keys: set[tuple[str, str]] = field(default_factory=set)  # (entity, type) keys this group indexes

    def summary(self) -> dict[str, Any]:
        return {
            "group_id": self.gid,
            "first": self.first,
            "last": self.last,
            "duration_s": self.last - self.first,
            "count": self.count,
            "entities": dict(sorted(self.entities.items(), key=lambda kv: -kv[1])),
            "types": dict(sorted(self.types.items(), key=lambda kv: -kv[1])),
            "rules": dict(self.rules),
        }


def _num(x: float) -> float | None:
    return None if x == _NEG_INF else x


def _unnum(x: float | None) -> float:
    return _NEG_INF if x is None else float(x)


class AlertCorrelator:
    """Streaming alert grouper; the rules are in the module docstring.

    Alerts are mappings with ``time`` (unix seconds), a type (``short``, else ``type``, else
    ``labels["alertname"]``, else ``name``), an optional ``name`` (text) and entity fields: each key of
    ``entity_keys`` is read from the alert, then from ``alert["labels"]``. Two alerts can only share a
    group through a common entity value or, for a short window, a common type.

    Parameters
    ----------
    min_gap_s: shortest silence that closes a group; dense bursts end after this (3-5 s keeps
        back-to-back scanner runs apart on the AIT data, 10 s merges them).
    gap_factor: a group tolerates ``gap_factor`` x its mean inter-arrival time of silence.
    max_gap_s: longest silence any group survives; also the memory horizon.
    prior_gap_s: pseudo inter-arrival time a new group starts with (one pseudo-gap).
    similarity: minimum token Jaccard for ``same_entity_similar_type``.
    cooccur_s: window for ``same_entity_burst`` and for how long a burst stays active.
    cross_entity_s: window for ``same_type_other_entity``.
    burst_rate: alerts within one second that make a group an active burst.
    entity_keys: alert fields (or labels) whose values link alerts (default host and ip).
    max_open_groups: hard cap on open groups (least recently active close first).
    max_groups_per_entity: open groups remembered per entity for the similarity check.
    max_labels: distinct entities / types kept per group (summaries, similarity); index keys per
        group are capped at its square.
    on_close: optional callback given each closed group's summary (not part of the state).
    """

    def __init__(
        self,
        *,
        min_gap_s: float = 5.0,
        gap_factor: float = 30.0,
        max_gap_s: float = 3600.0,
        prior_gap_s: float = 600.0,
        similarity: float = 0.4,
        cooccur_s: float = 1.0,
        cross_entity_s: float = 10.0,
        burst_rate: int = 20,
        entity_keys: tuple[str, ...] | list[str] = ("host", "ip"),
        max_open_groups: int = 10_000,
        max_groups_per_entity: int = 16,
        max_labels: int = 32,
        on_close: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not 0 < min_gap_s <= max_gap_s:
            raise ValueError("need 0 < min_gap_s <= max_gap_s")
        if not 0.0 <= similarity <= 1.0:
            raise ValueError("similarity must be in [0, 1]")
        if gap_factor <= 0 or prior_gap_s < 0 or burst_rate < 1 or max_open_groups < 1:
            raise ValueError("gap_factor > 0, prior_gap_s >= 0, burst_rate >= 1, max_open_groups >= 1")
        if not entity_keys:
            raise ValueError("entity_keys must not be empty")
        self.params: dict[str, Any] = {
            "min_gap_s": float(min_gap_s),
            "gap_factor": float(gap_factor),
            "max_gap_s": float(max_gap_s),
            "prior_gap_s": float(prior_gap_s),
            "similarity": float(similarity),
            "cooccur_s": float(cooccur_s),
            "cross_entity_s": float(cross_entity_s),
            "burst_rate": int(burst_rate),
            "entity_keys": list(entity_keys),
            "max_open_groups": int(max_open_groups),
            "max_groups_per_entity": int(max_groups_per_entity),
            "max_labels": int(max_labels),
        }
        # hot-path copies
        self._min_gap, self._gap_factor, self._max_gap = float(min_gap_s), float(gap_factor), float(max_gap_s)
        self._prior, self._sim_min = float(prior_gap_s), float(similarity)
        self._cooccur, self._cross, self._burst_rate = (
            float(cooccur_s),
            float(cross_entity_s),
            int(burst_rate),
        )
        self._ent_keys = tuple(entity_keys)
        self._max_open, self._per_entity, self._max_labels = (
            int(max_open_groups),
            int(max_groups_per_entity),
            int(max_labels),
        )
        self.on_close = on_close
        self._groups: OrderedDict[int, _Group] = OrderedDict()  # least recently active first
        self._by_key: dict[tuple[str, str], int] = {}  # (entity, type) -> gid
        self._by_entity: dict[str, OrderedDict[int, None]] = {}  # entity -> gids, most recent last
        self._by_type: dict[str, tuple[int, float, str]] = {}  # type -> (gid, last seen, entity)
        self._hot: dict[str, int] = {}  # entity -> gid of its latest bursting group
        self._type_tokens: dict[str, frozenset[str]] = {}  # types of open groups -> tokens
        self._tokens: dict[tuple[str, str], frozenset[str]] = {}  # cache
        self._sim_cache: dict[tuple[str, str], float] = {}  # cache
        self._next_id = 1
        self._now = _NEG_INF
        self.n_seen = 0
        self.n_groups = 0

    # ------------------------------------------------------------------------------ public API
    def __len__(self) -> int:
        """Open groups."""
        return len(self._groups)

    @property
    def now(self) -> float:
        return self._now

    def add(self, alert: Mapping[str, Any]) -> Assignment:
        """Assign one alert to a group and say why."""
        t = float(alert["time"])
        labels = alert.get("labels") or {}
        name = str(alert.get("name") or labels.get("alertname") or "")
        typ = str(alert.get("short") or alert.get("type") or labels.get("alertname") or name or "?")
        ents = []
        for k in self._ent_keys:
            v = alert.get(k) or labels.get(k)
            if v:
                ents.append(f"{k}:{v}")
        if not ents:
            ents.append("?")
        if t > self._now:
            self._now = t
            closed = self.expire(t)
            if closed and self.on_close is not None:
                for summary in closed:
                    self.on_close(summary)
        self.n_seen += 1

        groups = self._groups
        cooccur = self._cooccur
        g = None
        rule = RULE_NEW
        sim, like, via = 0.0, typ, ents[0]  # similarity, the group's type it matched, the linking entity
        # 0. an active burst on this entity
        for e in ents:
            gid = self._hot.get(e)
            if gid is not None:
                c = groups.get(gid)
                if c is None:
                    del self._hot[e]
                elif t - c.burst_t <= cooccur and t - c.last <= c.gap:
                    g, rule, via = c, RULE_ACTIVE, e
                    if typ not in c.types:
                        sim, like = self._best_sim(typ, name, c)
                    else:
                        sim = 1.0
                    break
        # 1. same entity, same type
        if g is None:
            for e in ents:
                gid = self._by_key.get((e, typ))
                if gid is not None:
                    c = groups.get(gid)
                    if c is not None and t - c.last <= c.gap:
                        g, rule, sim, via = c, RULE_SAME, 1.0, e
                        break
        if g is None:
            best = recent = None
            best_sim, best_like, best_e, recent_e = -1.0, typ, via, via
            for e in ents:
                gids = self._by_entity.get(e)
                if not gids:
                    continue
                for gid in gids:
                    c = groups.get(gid)
                    if c is None or t - c.last > c.gap:
                        continue
                    if recent is None or c.last > recent.last:
                        recent, recent_e = c, e
                    s, other = self._best_sim(typ, name, c)
                    if s > best_sim:
                        best, best_sim, best_like, best_e = c, s, other, e
            if best is not None and best_sim >= self._sim_min:  # 2. similar text
                g, rule, sim, like, via = best, RULE_SIMILAR, best_sim, best_like, best_e
            elif recent is not None and t - recent.last <= cooccur:  # 3. fired together
                g, rule, via = recent, RULE_BURST, recent_e
                sim, like = (best_sim, best_like) if best is recent else self._best_sim(typ, name, recent)
            else:  # 4. same type elsewhere, just now
                hit = self._by_type.get(typ)
                if hit is not None and t - hit[1] <= self._cross and hit[2] not in ents:
                    c = groups.get(hit[0])
                    if c is not None and t - c.last <= c.gap:
                        g, rule, sim, via = c, RULE_CROSS, 1.0, hit[2]
        new = g is None
        if g is None:
            g = self._open(t)
            reason: dict[str, Any] = {
                "rule": RULE_NEW,
                "similarity": 0.0,
                "matched_group_age_s": 0.0,
                "text": _RULE_TEXT[RULE_NEW],
            }
        else:
            reason = {
                "rule": rule,
                "similarity": round(sim, 4),
                "matched_group_age_s": t - g.first,
                "since_last_s": max(0.0, t - g.last),
                "gap_tolerance_s": round(g.gap, 3),
                "entity": via,  # the host/ip (or label) value that linked the alert to the group
                "matched_type": like if sim > 0 else None,  # the group's alert type it resembled
                "text": _RULE_TEXT[rule].format(
                    entity=via.split(":", 1)[0],
                    gap=g.gap,
                    sim=sim,
                    cooccur=cooccur,
                    cross=self._cross,
                    rate=self._burst_rate,
                ),
            }
        self._touch(g, t, ents, typ, name, rule)
        return Assignment(g.gid, reason, new)

    def expire(self, now: float) -> list[dict[str, Any]]:
        """Close groups whose silence exceeds their tolerance; return their summaries, oldest first.

        The sweep runs from the least recently active group and stops at the first one still open, so
        a short-tolerance group queued behind a long-lived one is closed later (it no longer matches
        meanwhile); either way no group stays in memory longer than ``max_gap_s`` after its last alert.
        """
        closed = []
        groups = self._groups
        while groups:
            gid = next(iter(groups))
            g = groups[gid]
            if now - g.last > g.gap or len(groups) > self._max_open:
                closed.append(self._close(gid))
            else:
                break
        return closed

    def flush(self) -> list[dict[str, Any]]:
        """Close every open group (end of stream); summaries oldest first."""
        return [self._close(gid) for gid in list(self._groups)]

    def open_groups(self) -> list[dict[str, Any]]:
        return [g.summary() for g in self._groups.values()]

    # ------------------------------------------------------------------------------ internals
    def _tokens_for(self, typ: str, name: str) -> frozenset[str]:
        key = (typ, name)
        tok = self._tokens.get(key)
        if tok is None:
            if len(self._tokens) >= 4096:
                self._tokens.clear()
            tok = self._tokens[key] = text_tokens(typ if typ != name else "", name)
        return tok

    def _best_sim(self, typ: str, name: str, g: _Group) -> tuple[float, str]:
        """Highest token Jaccard between this alert's type and the group's types, and that type."""
        cache = self._sim_cache
        best, like = 0.0, ""
        for other in g.types:
            key = (typ, other)
            s = cache.get(key)
            if s is None:
                if len(cache) >= 65536:
                    cache.clear()
                tok = self._type_tokens.get(other, frozenset())
                s = cache[key] = jaccard(self._tokens_for(typ, name), tok)
            if s > best:
                best, like = s, other
        return best, like

    def _open(self, t: float) -> _Group:
        g = _Group(gid=self._next_id, first=t, last=t)
        self._next_id += 1
        self.n_groups += 1
        self._groups[g.gid] = g
        return g

    def _touch(self, g: _Group, t: float, ents: list[str], typ: str, name: str, rule: str) -> None:
        g.count += 1
        g.last = max(g.last, t)
        gap = self._gap_factor * (g.last - g.first + self._prior) / g.count
        g.gap = self._min_gap if gap < self._min_gap else min(gap, self._max_gap)
        sec = t // 1
        if sec == g.sec:
            g.sec_n += 1
        elif sec > g.sec:
            g.sec, g.sec_n = sec, 1
        bursting = g.sec_n >= self._burst_rate
        if bursting:
            g.burst_t = t
        g.rules[rule] = g.rules.get(rule, 0) + 1
        if typ in g.types:
            g.types[typ] += 1
        elif len(g.types) < self._max_labels:
            g.types[typ] = 1
            if typ not in self._type_tokens:
                if len(self._type_tokens) >= 65536:  # runaway type vocabulary: forget, similarity degrades
                    self._type_tokens.clear()
                self._type_tokens[typ] = self._tokens_for(typ, name)
        self._groups.move_to_end(g.gid)
        for e in ents:
            if e in g.entities:
                g.entities[e] += 1
            elif len(g.entities) < self._max_labels:
                g.entities[e] = 1
            key = (e, typ)
            if key not in g.keys:
                if len(g.keys) >= self._max_labels * self._max_labels:
                    continue  # index full: the group stays reachable through its existing keys
                g.keys.add(key)
            # every index entry below belongs to an entity of g.keys, so _close() can remove it
            self._by_key[key] = g.gid
            if bursting:
                self._hot[e] = g.gid
            lst = self._by_entity.get(e)
            if lst is None:
                lst = self._by_entity[e] = OrderedDict()
            if g.gid in lst:
                lst.move_to_end(g.gid)
            else:
                lst[g.gid] = None
                if len(lst) > self._per_entity:
                    lst.popitem(last=False)
        if (ents[0], typ) in g.keys:  # so that _close() finds it
            self._by_type[typ] = (g.gid, t, ents[0])

    def _close(self, gid: int) -> dict[str, Any]:
        g = self._groups.pop(gid)
        for key in g.keys:
            if self._by_key.get(key) == gid:
                del self._by_key[key]
        for e in {k[0] for k in g.keys}:
            lst = self._by_entity.get(e)
            if lst is not None:
                lst.pop(gid, None)
                if not lst:
                    del self._by_entity[e]
            if self._hot.get(e) == gid:
                del self._hot[e]
        for typ in {k[1] for k in g.keys}:
            hit = self._by_type.get(typ)
            if hit is not None and hit[0] == gid:
                del self._by_type[typ]
        if not self._groups:
            self._type_tokens.clear()  # only types of open groups are needed
        return g.summary()

    # ------------------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        """JSON-able snapshot (open groups and indexes; caches are not saved)."""
        return {
            "version": VERSION,
            "params": dict(self.params),
            "next_id": self._next_id,
            "now": _num(self._now),
            "n_seen": self.n_seen,
            "n_groups": self.n_groups,
            "groups": [
                {
                    "gid": g.gid,
                    "first": g.first,
                    "last": g.last,
                    "count": g.count,
                    "gap": g.gap,
                    "sec": _num(g.sec),
                    "sec_n": g.sec_n,
                    "burst_t": _num(g.burst_t),
                    "entities": dict(g.entities),
                    "types": dict(g.types),
                    "rules": dict(g.rules),
                    "keys": sorted([list(k) for k in g.keys]),
                }
                for g in self._groups.values()
            ],
            "by_key": [[e, t, gid] for (e, t), gid in self._by_key.items()],
            "by_entity": {e: list(gids) for e, gids in self._by_entity.items()},
            "by_type": {t: [v[0], v[1], v[2]] for t, v in self._by_type.items()},
            "hot": dict(self._hot),
            "type_tokens": {t: sorted(v) for t, v in self._type_tokens.items()},
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], on_close: Callable[[dict[str, Any]], None] | None = None
    ) -> AlertCorrelator:
        if str(state.get("version", "")).split(".")[0] != VERSION.split(".")[0]:
            raise ValueError(f"state version {state.get('version')!r} is not compatible with {VERSION}")
        m = cls(**state["params"], on_close=on_close)
        m._next_id = int(state["next_id"])
        m._now = _unnum(state["now"])
        m.n_seen = int(state["n_seen"])
        m.n_groups = int(state["n_groups"])
        for d in state["groups"]:
            g = _Group(
                gid=int(d["gid"]),
                first=float(d["first"]),
                last=float(d["last"]),
                count=int(d["count"]),
                gap=float(d["gap"]),
                sec=_unnum(d["sec"]),
                sec_n=int(d["sec_n"]),
                burst_t=_unnum(d["burst_t"]),
                entities=dict(d["entities"]),
                types=dict(d["types"]),
                rules=dict(d["rules"]),
                keys={(k[0], k[1]) for k in d["keys"]},
            )
            m._groups[g.gid] = g
        m._by_key = {(e, t): int(gid) for e, t, gid in state["by_key"]}
        m._by_entity = {
            e: OrderedDict((int(x), None) for x in gids) for e, gids in state["by_entity"].items()
        }
        m._by_type = {t: (int(v[0]), float(v[1]), str(v[2])) for t, v in state["by_type"].items()}
        m._hot = {e: int(gid) for e, gid in state["hot"].items()}
        m._type_tokens = {t: frozenset(v) for t, v in state["type_tokens"].items()}
        return m
