"""Online grouping of related alerts into incidents (beyond exact dedup).

One pass, bounded memory, about O(1) work per alert. Every open group is indexed by
``(entity, type)``, by entity (host and/or ip) and by alert type, so an alert never scans all open
groups: it checks, in order,

1. ``same_entity_type``: an open group already holding this type on this host/ip;
2. ``same_entity_similar_type``: among the (at most ``max_groups_per_entity``) open groups of the
   host/ip, the one whose alert text is most similar, if the token Jaccard is >= ``similarity``;
3. ``same_entity_burst``: the most recently active group of the host/ip, if it fired within the
   last ``cooccur_s`` seconds (alerts of different types fired together by one cause);
4. ``same_type_other_entity``: the group that saw this exact type on another host/ip within the
   last ``cross_entity_s`` seconds (one scan or update hitting many machines);
5. otherwise a new group (``new``).

A group closes after a silence longer than its own tolerance,
``clamp(gap_factor * smoothed inter-arrival, min_gap_s, max_gap_s)``: a dense burst (a scanner
firing hundreds of alerts a second) ends after a few quiet seconds, a slow background stream (a
mail server's logins every minute) stays one group across quiet spells. ``max_gap_s`` also bounds
memory: nothing stays open longer than that without activity, and ``max_open_groups`` caps the
table (least recently active groups close first).

Text similarity is a token Jaccard on the normalised type code and alert name (``W-Acc-400`` +
"Web server 400 error code." -> {w, acc, 400, web, server, error, code}). The vocabulary of alert
types is small, so exact Jaccard over the few open groups of one host is cheaper than MinHash/LSH.

The model never sees labels. ``to_state()`` / ``from_state()`` round-trip through JSON.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

VERSION = "correlate-1.0.0"

# Rule names as they appear in Assignment.reason["rule"].
RULE_SAME = "same_entity_type"
RULE_SIMILAR = "same_entity_similar_type"
RULE_BURST = "same_entity_burst"
RULE_CROSS = "same_type_other_entity"
RULE_NEW = "new"

_RULE_TEXT = {
    RULE_SAME: "same {entity} + same type within {gap:.0f}s",
    RULE_SIMILAR: "same {entity} + similar alert text (jaccard {sim:.2f}) within {gap:.0f}s",
    RULE_BURST: "same {entity}, different type, fired within {cooccur:.0f}s of the group",
    RULE_CROSS: "same type on another host/ip within {cross:.0f}s",
    RULE_NEW: "no open group matched",
}

_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the of in on to for from and or is are was by with this that same alert".split())


def text_tokens(type_code: str, name: str) -> frozenset[str]:
    """Normalised token set of an alert type: type code parts + words of the name (crude plural strip)."""
    out = set()
    for tok in _TOKEN.findall(f"{type_code} {name}".lower()):
        if tok in _STOP:
            continue
        if len(tok) > 3 and tok.endswith("s") and not tok.endswith("ss"):
            tok = tok[:-1]
        out.add(tok)
    return frozenset(out)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
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
    dt: float = 0.0  # smoothed inter-arrival time, seconds
    gap: float = 0.0  # current silence tolerance, seconds
    entities: dict[str, int] = field(default_factory=dict)  # entity -> count (capped)
    types: dict[str, int] = field(default_factory=dict)  # type -> count (capped)
    rules: dict[str, int] = field(default_factory=dict)  # rule -> count
    keys: set[tuple[str, str]] = field(default_factory=set)  # registered (entity, type) keys

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


class AlertCorrelator:
    """Streaming alert grouper; see the module docstring for the rules.

    Parameters
    ----------
    min_gap_s: shortest silence that closes a group (dense bursts end after this).
    gap_factor: a group tolerates a silence of ``gap_factor`` x its smoothed inter-arrival time.
    max_gap_s: longest silence any group survives; also the memory horizon.
    similarity: minimum token Jaccard for ``same_entity_similar_type``.
    cooccur_s: window for ``same_entity_burst`` (another type on the same host/ip).
    cross_entity_s: window for ``same_type_other_entity``.
    dt_alpha: smoothing weight of the inter-arrival average.
    max_open_groups: hard cap on open groups (least recently active close first).
    max_groups_per_entity: open groups remembered per host/ip for the similarity check.
    max_labels: distinct entities / types kept per group for summaries and similarity.
    on_close: optional callback receiving the summary of every group that closes (not part of the state).
    """

    def __init__(
        self,
        *,
        min_gap_s: float = 5.0,
        gap_factor: float = 30.0,
        max_gap_s: float = 3600.0,
        similarity: float = 0.4,
        cooccur_s: float = 1.0,
        cross_entity_s: float = 10.0,
        dt_alpha: float = 0.05,
        max_open_groups: int = 10_000,
        max_groups_per_entity: int = 16,
        max_labels: int = 32,
        on_close: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not 0 < min_gap_s <= max_gap_s:
            raise ValueError("need 0 < min_gap_s <= max_gap_s")
        if not 0.0 <= similarity <= 1.0:
            raise ValueError("similarity must be in [0, 1]")
        self.params = {
            "min_gap_s": float(min_gap_s),
            "gap_factor": float(gap_factor),
            "max_gap_s": float(max_gap_s),
            "similarity": float(similarity),
            "cooccur_s": float(cooccur_s),
            "cross_entity_s": float(cross_entity_s),
            "dt_alpha": float(dt_alpha),
            "max_open_groups": int(max_open_groups),
            "max_groups_per_entity": int(max_groups_per_entity),
            "max_labels": int(max_labels),
        }
        self._p = tuple(self.params.values())
        self.on_close = on_close
        self._groups: OrderedDict[int, _Group] = OrderedDict()  # least recently active first
        self._by_key: dict[tuple[str, str], int] = {}
        self._by_entity: dict[str, OrderedDict[int, None]] = {}  # entity -> gids, most recent last
        self._by_type: dict[str, tuple[int, float, str]] = {}  # type -> (gid, last seen, entity)
        self._tokens: dict[tuple[str, str], frozenset[str]] = {}
        self._type_tokens: dict[str, frozenset[str]] = {}
        self._next_id = 1
        self._now = float("-inf")
        self.n_seen = 0
        self.n_groups = 0

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return len(self._groups)

    @property
    def now(self) -> float:
        return self._now

    def add(self, alert: Mapping[str, Any]) -> Assignment:
        """Assign one alert (keys: time, host and/or ip, short/type and/or name) to a group."""
        t = float(alert["time"])
        host = alert.get("host") or ""
        ip = alert.get("ip") or ""
        name = alert.get("name") or ""
        typ = alert.get("short") or alert.get("type") or name
        # entities: host first, ip as an alias; either one links
        ents = [e for e in (f"h:{host}" if host else "", f"ip:{ip}" if ip else "") if e] or ["h:?"]
        if t > self._now:
            self._now = t
            closed = self.expire(t)
            if closed and self.on_close is not None:
                for summary in closed:
                    self.on_close(summary)
        self.n_seen += 1

        (min_gap, gap_factor, max_gap, sim_min, cooccur, cross, alpha, _, _, _) = self._p
        groups = self._groups
        g = None
        rule = RULE_NEW
        sim = 0.0
        # 1. exact (entity, type)
        for e in ents:
            gid = self._by_key.get((e, typ))
            if gid is not None:
                g = groups.get(gid)
                if g is not None and t - g.last <= g.gap:
                    rule, sim = RULE_SAME, 1.0
                    break
                g = None
        if g is None:
            tok = self._tokens_for(typ, name)
            best, best_sim, recent = None, -1.0, None
            for e in ents:
                gids = self._by_entity.get(e)
                if not gids:
                    continue
                for gid in reversed(gids):
                    c = groups.get(gid)
                    if c is None or t - c.last > c.gap:
                        continue
                    if recent is None or c.last > recent.last:
                        recent = c
                    s = max((jaccard(tok, self._type_tokens.get(ty, frozenset())) for ty in c.types), default=0.0)
                    if s > best_sim:
                        best, best_sim = c, s
            # 2. same entity, similar text
            if best is not None and best_sim >= sim_min:
                g, rule, sim = best, RULE_SIMILAR, best_sim
            # 3. same entity, another type fired at about the same time
            elif recent is not None and t - recent.last <= cooccur:
                g, rule, sim = recent, RULE_BURST, max(best_sim, 0.0) if best is recent else 0.0
            else:
                # 4. same type on another entity, recently
                hit = self._by_type.get(typ)
                if hit is not None and t - hit[1] <= cross and hit[2] not in ents:
                    c = groups.get(hit[0])
                    if c is not None and t - c.last <= c.gap:
                        g, rule, sim = c, RULE_CROSS, 1.0
        new = g is None
        if new:
            g = self._open(t)
        age = t - g.first
        since = max(0.0, t - g.last)
        tol = g.gap
        self._touch(g, t, ents, typ, name, rule)
        if new:
            reason: dict[str, Any] = {"rule": RULE_NEW, "similarity": 0.0, "matched_group_age_s": 0.0}
        else:
            ent = "host" if ents[0].startswith("h:") else "ip"
            reason = {
                "rule": rule,
                "similarity": round(sim, 4),
                "matched_group_age_s": age,
                "since_last_s": since,
                "gap_tolerance_s": round(tol, 3),
                "text": _RULE_TEXT[rule].format(entity=ent, gap=tol, sim=sim, cooccur=cooccur, cross=cross),
            }
        return Assignment(g.gid, reason, new)

    def expire(self, now: float) -> list[dict[str, Any]]:
        """Close groups silent for longer than their tolerance; return their summaries (oldest first).

        Groups are swept from the least recently active end; the sweep stops at the first group still
        open, so a group with a short tolerance behind a long-lived one closes lazily (it is ignored
        by lookups once stale, and is gone after at most ``max_gap_s``).
        """
        closed = []
        groups = self._groups
        cap = self.params["max_open_groups"]
        while groups:
            gid, g = next(iter(groups.items()))
            if now - g.last > g.gap or len(groups) > cap:
                closed.append(self._close(gid))
            else:
                break
        return closed

    def flush(self) -> list[dict[str, Any]]:
        """Close every open group (end of stream)."""
        return [self._close(gid) for gid in list(self._groups)]

    def open_groups(self) -> list[dict[str, Any]]:
        return [g.summary() for g in self._groups.values()]

    # ------------------------------------------------------------------ internals
    def _tokens_for(self, typ: str, name: str) -> frozenset[str]:
        key = (typ, name)
        tok = self._tokens.get(key)
        if tok is None:
            if len(self._tokens) > 4096:  # bounded cache
                self._tokens.clear()
            tok = self._tokens[key] = text_tokens(typ if typ != name else "", name)
        if typ not in self._type_tokens:
            if len(self._type_tokens) > 4096:
                self._type_tokens.clear()
            self._type_tokens[typ] = tok
        return tok

    def _open(self, t: float) -> _Group:
        g = _Group(gid=self._next_id, first=t, last=t, gap=self.params["min_gap_s"])
        self._next_id += 1
        self.n_groups += 1
        self._groups[g.gid] = g
        return g

    def _touch(self, g: _Group, t: float, ents: list[str], typ: str, name: str, rule: str) -> None:
        min_gap, gap_factor, max_gap, _, _, _, alpha, _, per_ent, max_labels = self._p
        if g.count:
            dt = t - g.last
            if dt > 0:
                g.dt += alpha * (dt - g.dt)
            else:
                g.dt -= alpha * g.dt
            gap = gap_factor * g.dt
            g.gap = min_gap if gap < min_gap else (max_gap if gap > max_gap else gap)
        g.count += 1
        if t > g.last:
            g.last = t
        g.rules[rule] = g.rules.get(rule, 0) + 1
        if typ in g.types:
            g.types[typ] += 1
        elif len(g.types) < max_labels:
            g.types[typ] = 1
            self._tokens_for(typ, name)
        self._groups.move_to_end(g.gid)
        for e in ents:
            if e in g.entities:
                g.entities[e] += 1
            elif len(g.entities) < max_labels:
                g.entities[e] = 1
            key = (e, typ)
            if self._by_key.get(key) != g.gid:
                self._by_key[key] = g.gid
                g.keys.add(key)
            lst = self._by_entity.get(e)
            if lst is None:
                lst = self._by_entity[e] = OrderedDict()
            if g.gid in lst:
                lst.move_to_end(g.gid)
            else:
                lst[g.gid] = None
                if len(lst) > per_ent:
                    lst.popitem(last=False)
        self._by_type[typ] = (g.gid, t, ents[0])

    def _close(self, gid: int) -> dict[str, Any]:
        g = self._groups.pop(gid)
        for key in g.keys:
            if self._by_key.get(key) == gid:
                del self._by_key[key]
            lst = self._by_entity.get(key[0])
            if lst is not None:
                lst.pop(gid, None)
                if not lst:
                    del self._by_entity[key[0]]
        for typ in g.types:
            hit = self._by_type.get(typ)
            if hit is not None and hit[0] == gid:
                del self._by_type[typ]
        return g.summary()

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "params": dict(self.params),
            "next_id": self._next_id,
            "now": self._now if self._now != float("-inf") else None,
            "n_seen": self.n_seen,
            "n_groups": self.n_groups,
            "groups": [
                {
                    "gid": g.gid, "first": g.first, "last": g.last, "count": g.count, "dt": g.dt,
                    "gap": g.gap, "entities": g.entities, "types": g.types, "rules": g.rules,
                    "keys": sorted([list(k) for k in g.keys]),
                }
                for g in self._groups.values()
            ],
            "by_key": [[e, t, gid] for (e, t), gid in self._by_key.items()],
            "by_entity": {e: list(gids) for e, gids in self._by_entity.items()},
            "by_type": {t: list(v) for t, v in self._by_type.items()},
            "type_tokens": {t: sorted(v) for t, v in self._type_tokens.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], on_close: Callable[[dict[str, Any]], None] | None = None) -> "AlertCorrelator":
        if str(state.get("version", "")).split(".")[0] != VERSION.split(".")[0]:
            raise ValueError(f"state version {state.get('version')!r} is not compatible with {VERSION}")
        m = cls(**state["params"], on_close=on_close)
        m._next_id = int(state["next_id"])
        m._now = float("-inf") if state["now"] is None else float(state["now"])
        m.n_seen = int(state["n_seen"])
        m.n_groups = int(state["n_groups"])
        for d in state["groups"]:
            g = _Group(
                gid=int(d["gid"]), first=d["first"], last=d["last"], count=d["count"], dt=d["dt"], gap=d["gap"],
                entities=dict(d["entities"]), types=dict(d["types"]), rules=dict(d["rules"]),
                keys={(k[0], k[1]) for k in d["keys"]},
            )
            m._groups[g.gid] = g
        m._by_key = {(e, t): int(gid) for e, t, gid in state["by_key"]}
        m._by_entity = {e: OrderedDict((int(g), None) for g in gids) for e, gids in state["by_entity"].items()}
        m._by_type = {t: (int(v[0]), float(v[1]), str(v[2])) for t, v in state["by_type"].items()}
        m._type_tokens = {t: frozenset(v) for t, v in state["type_tokens"].items()}
        return m
