"""Online log/alert template mining, Drain-style (He et al., "Drain: An Online Log Parsing Approach
with Fixed Depth Tree", ICWS 2017), written from the paper's description.

One line at a time:

1. mask obvious variables (IPs, hex, UUIDs, numbers, ...) with ``<*>``, plus optional per-source regexes;
2. split on whitespace;
3. walk a fixed-depth tree: first by token count, then by the first ``prefix_depth`` tokens (a token that
   contains a digit, or that would exceed ``max_children`` at a node, goes to the ``<*>`` branch);
4. in the leaf, pick the cluster whose template shares the largest fraction of tokens with the line
   (a template ``<*>`` only counts as shared when the line has a masked ``<*>`` there too);
   if that fraction is >= ``sim_threshold`` the line joins it and differing positions become ``<*>``,
   else the line starts a new cluster.

State is bounded: at most ``max_clusters`` clusters (least recently matched evicted first) and at most
``max_children`` branches per tree node. ``to_state()`` is plain JSON.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

VERSION = "templates-drain-1"

WILDCARD = "<*>"

# Generic masks, applied in this order. Each must only catch what is a variable in (nearly) any log.
DEFAULT_MASKS: tuple[str, ...] = (
    # UUID
    r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
    # IPv4 with optional :port
    r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?(?![\w.])",
    # hex with 0x prefix, or a long bare hex run holding at least one digit
    r"\b0[xX][0-9a-fA-F]+\b",
    r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b",
    # identifiers with a numbered part after "_" or "-": attempt_0024_m_000160, node-173, blk_-42
    r"(?<![\w-])(?=[\w-]*[_-]-?\d)[A-Za-z][\w-]*",
    # standalone (signed, decimal) numbers, not glued to letters; "abc123" stays as is
    r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w])",
)

_HAS_DIGIT = re.compile(r"\d")


@dataclass
class _Cluster:
    cid: int
    tokens: list[str]
    path: tuple[str, ...]  # tree keys from the root to its leaf (length key first)
    size: int = 0


class TemplateMiner:
    """Drain-style online template miner.

    ``add(text)`` learns and returns ``(template_id, template, params)``; ``match(text)`` only looks up.
    ``params`` are the original values behind every wildcard/masked part of the line, in order.
    """

    def __init__(
        self,
        sim_threshold: float = 0.7,
        prefix_depth: int = 2,
        max_children: int = 100,
        max_clusters: int = 10_000,
        masks: Iterable[str] | None = None,
        extra_masks: Iterable[str] = (),
    ) -> None:
        if not 0.0 < sim_threshold <= 1.0:
            raise ValueError("sim_threshold must be in (0, 1]")
        if prefix_depth < 0 or max_children < 2 or max_clusters < 1:
            raise ValueError("prefix_depth >= 0, max_children >= 2, max_clusters >= 1")
        self.sim_threshold = float(sim_threshold)
        self.prefix_depth = int(prefix_depth)
        self.max_children = int(max_children)
        self.max_clusters = int(max_clusters)
        # per-source masks first (they are more specific), then the generic ones
        self.extra_masks = list(extra_masks)
        self.masks = list(DEFAULT_MASKS if masks is None else masks)
        self._compiled = [re.compile(p) for p in self.extra_masks + self.masks]
        self._root: dict[str, Any] = {}
        self._clusters: OrderedDict[int, _Cluster] = OrderedDict()  # LRU order: oldest first
        self._next_id = 1
        self.evicted = 0

    # ---- preprocessing ------------------------------------------------------------------------
    def mask(self, text: str) -> tuple[str, list[str]]:
        """Replace variables by ``<*>``; returns the masked text and the replaced values in order
        of their position in the original text."""
        spans: list[tuple[int, int]] = []
        # Each mask runs on the original text; spans overlapping an earlier (higher-priority) mask are
        # skipped, so masks never see each other's placeholders.
        for rx in self._compiled:
            for m in rx.finditer(text):
                s, e = m.span()
                if s == e or any(s < e2 and s2 < e for s2, e2 in spans):
                    continue
                spans.append((s, e))
        if not spans:
            return text, []
        spans.sort()
        out, values, pos = [], [], 0
        for s, e in spans:
            out.append(text[pos:s])
            out.append(WILDCARD)
            values.append(text[s:e])
            pos = e
        out.append(text[pos:])
        return "".join(out), values

    # ---- tree ---------------------------------------------------------------------------------
    def _keys(self, tokens: list[str]) -> list[str]:
        keys = [str(len(tokens))]
        for tok in tokens[: self.prefix_depth]:
            keys.append(WILDCARD if _HAS_DIGIT.search(tok) else tok)
        return keys

    def _leaf(self, keys: list[str], create: bool) -> tuple[list[int] | None, tuple[str, ...]]:
        node = self._root
        path: list[str] = []
        last = len(keys) - 1
        for i, key in enumerate(keys):
            child = node.get(key)
            # token levels fall back to the wildcard branch when the token is unknown or the node is full
            full = len(node) >= self.max_children - (WILDCARD not in node)  # keep a slot for <*>
            if child is None and i > 0 and (not create or full):
                key = WILDCARD
                child = node.get(key)
            if child is None:
                if not create:
                    return None, ()
                child = [] if i == last else {}
                node[key] = child
            path.append(key)
            node = child
        return node, tuple(path)  # type: ignore[return-value]

    @staticmethod
    def _similarity(template: list[str], tokens: list[str]) -> tuple[float, int]:
        """(fraction of positions that agree, number of template wildcards); the second breaks ties
        toward the more general template, as in Drain."""
        same = wild = 0
        for t, s in zip(template, tokens):
            if t == s:  # includes <*> against a masked <*>
                same += 1
            if t == WILDCARD:
                wild += 1
        return (same / len(template) if template else 1.0), wild

    def _best(self, leaf: list[int], tokens: list[str]) -> _Cluster | None:
        best, best_key = None, (-1.0, -1)
        for cid in leaf:
            c = self._clusters[cid]
            key = self._similarity(c.tokens, tokens)
            if key > best_key:
                best, best_key = c, key
        if best is not None and best_key[0] >= self.sim_threshold:
            return best
        return None

    # ---- public API ---------------------------------------------------------------------------
    def add(self, text: str) -> tuple[int, str, list[str]]:
        """Learn from one line. Returns (template_id, current template, params)."""
        masked, values = self.mask(text)
        tokens = masked.split()
        leaf, path = self._leaf(self._keys(tokens), create=True)
        assert leaf is not None
        c = self._best(leaf, tokens)
        if c is None:
            c = _Cluster(self._next_id, list(tokens), path)
            self._next_id += 1
            self._clusters[c.cid] = c
            leaf.append(c.cid)
            self._evict()
        else:
            c.tokens = [t if t == s else WILDCARD for t, s in zip(c.tokens, tokens)]
            self._clusters.move_to_end(c.cid)
        c.size += 1
        return c.cid, " ".join(c.tokens), self._params(c.tokens, text.split(), tokens, values)

    def match(self, text: str) -> tuple[int, str, list[str]] | None:
        """Look a line up without learning; None when no cluster is similar enough."""
        masked, values = self.mask(text)
        tokens = masked.split()
        leaf, _ = self._leaf(self._keys(tokens), create=False)
        c = self._best(leaf, tokens) if leaf else None
        if c is None:
            return None
        return c.cid, " ".join(c.tokens), self._params(c.tokens, text.split(), tokens, values)

    @staticmethod
    def _params(template: list[str], raw: list[str], tokens: list[str], values: list[str]) -> list[str]:
        # Masked values come back in order; template wildcards over unmasked tokens add the token itself.
        # If a mask spanned whitespace the raw and masked token lists differ in length: then only the
        # masked values are reported.
        vals = iter(values)
        out: list[str] = []
        aligned = len(raw) == len(tokens)
        for i, (t, s) in enumerate(zip(template, tokens)):
            n = s.count(WILDCARD)
            if t == WILDCARD and n == 0 and aligned:
                out.append(raw[i])
            else:
                out.extend(v for _, v in zip(range(n), vals))
        return out

    def _evict(self) -> None:
        while len(self._clusters) > self.max_clusters:
            cid, c = self._clusters.popitem(last=False)
            # follow the cluster's own path, drop it from its leaf and prune branches left empty
            trail: list[tuple[dict[str, Any], str]] = []
            node: Any = self._root
            for key in c.path:
                if not isinstance(node, dict) or key not in node:
                    break
                trail.append((node, key))
                node = node[key]
            else:
                if cid in node:
                    node.remove(cid)
                for parent, key in reversed(trail):
                    if parent[key]:
                        break
                    del parent[key]
            self.evicted += 1

    @property
    def templates(self) -> dict[int, str]:
        return {cid: " ".join(c.tokens) for cid, c in self._clusters.items()}

    def __len__(self) -> int:
        return len(self._clusters)

    # ---- state --------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "params": {
                "sim_threshold": self.sim_threshold,
                "prefix_depth": self.prefix_depth,
                "max_children": self.max_children,
                "max_clusters": self.max_clusters,
                "masks": self.masks,
                "extra_masks": self.extra_masks,
            },
            "next_id": self._next_id,
            "evicted": self.evicted,
            # LRU order is kept by list order
            "clusters": [[c.cid, c.tokens, list(c.path), c.size] for c in self._clusters.values()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TemplateMiner:
        if state.get("version") != VERSION:
            raise ValueError(f"state version {state.get('version')!r} != {VERSION!r}")
        m = cls(**state["params"])
        m._next_id = int(state["next_id"])
        m.evicted = int(state.get("evicted", 0))
        for cid, tokens, path, size in state["clusters"]:
            c = _Cluster(int(cid), list(tokens), tuple(path), int(size))
            m._clusters[c.cid] = c
            # rebuild the exact tree path the cluster was filed under
            node: Any = m._root
            for i, key in enumerate(c.path):
                node = node.setdefault(key, [] if i == len(c.path) - 1 else {})
            node.append(c.cid)
        return m
