"""Similar past incidents: an online BM25F index with a character n-gram re-rank.

* Words: lower-cased alphanumeric tokens, English stop words dropped, a light suffix stemmer
  (plural/-ing/-ed/-ly/-ation...), plus adjacent-word bigrams ("load_balanc", "leap_second").
* BM25F: each document is a set of fields (``text`` plus e.g. title, company, product, keywords);
  term frequencies are summed over fields with per-field weights (company/product/title boosted), then
  scored with BM25 (k1, b) on the weighted length. Postings are append-only arrays, so ``add`` is O(len(doc))
  and a query touches only the postings of its own terms.
* Re-rank: the ``rerank`` best BM25 candidates are re-scored with a mix of normalised BM25 and the cosine of
  character 3..5-gram TF-IDF vectors (IDF over the candidates), which tolerates spelling and morphology
  that the word stemmer misses. Only those candidates are re-tokenised, so the cost does not grow with
  the index.
* Explanations: the query terms that contribute most to a match, with their share of the BM25 score.

State (``to_state``) is the raw documents; ``from_state`` rebuilds the index, so a tokenizer change only
needs a new ``VERSION``.
"""

from __future__ import annotations

import math
import re
from array import array
from collections import Counter, OrderedDict
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import numpy as np

VERSION = "similar-bm25f-1"
NGRAM_CACHE_DOCS = 4096

DEFAULT_FIELD_WEIGHTS: dict[str, float] = {
    "text": 1.0,
    "title": 2.0,
    "company": 2.0,
    "product": 2.0,
    "keywords": 1.0,
}

_STOP = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having
he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
nor not now of off on once only or other our ours ourselves out over own same she should so some such than
that the their theirs them themselves then there these they this those through to too under until up very
was we were what when where which while who whom why will with would you your yours yourself yourselves
s t don didn doesn isn wasn weren won wouldn shouldn couldn one two may might must shall us via per within
without however thus therefore since yet
""".split())  # noqa: SIM905

_WORD = re.compile(r"[a-z0-9]+(?:['\u2019][a-z]+)?")


def _stem(w: str) -> str:
    """Small suffix stripper (a subset of Porter step 1 and 2); enough to merge the common forms."""
    if len(w) <= 3 or w.isdigit():
        return w
    for suf, rep in (
        ("ational", "ate"), ("ization", "ize"), ("ations", "ate"), ("ation", "ate"), ("iveness", "ive"),
        ("fulness", "ful"), ("ousness", "ous"), ("ments", "ment"), ("ingly", ""), ("edly", ""),
        ("ies", "y"), ("ied", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("ly", ""), ("es", "e"),
        ("s", ""),
    ):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            if suf == "s" and w.endswith(("ss", "us", "is")):
                return w
            w = w[: len(w) - len(suf)] + rep
            break
    if len(w) > 4 and w[-1] == w[-2] and w[-1] not in "lsz":  # stopp -> stop, plann -> plan
        w = w[:-1]
    if len(w) > 4 and w.endswith("e"):
        w = w[:-1]
    return w


def tokenize(text: str, bigrams: bool = True, surface: dict[str, str] | None = None) -> list[str]:
    """Stemmed content words, then bigrams of consecutive content words (joined by '_').
    ``surface``, if given, is filled with term -> the first original spelling (for explanations)."""
    words: list[str] = []
    raw: list[str] = []
    for m in _WORD.finditer(text.lower()):
        w = re.split(r"['\u2019]", m.group(0))[0]
        if w in _STOP or len(w) < 2:
            continue
        words.append(_stem(w))
        raw.append(w)
    terms = words
    if bigrams and len(words) > 1:
        terms = words + [f"{a}_{b}" for a, b in pairwise(words)]
    if surface is not None:
        for t, w in zip(words, raw):
            surface.setdefault(t, w)
        for i in range(len(words) - 1):
            surface.setdefault(f"{words[i]}_{words[i + 1]}", f"{raw[i]} {raw[i + 1]}")
    return terms


def _char_ngrams(text: str, lo: int = 3, hi: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Hashed character n-grams of the normalised text: (sorted unique uint64 hashes, counts)."""
    s = " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "
    b = np.frombuffer(s.encode("ascii", "ignore"), dtype=np.uint8).astype(np.uint64)
    parts = []
    with np.errstate(over="ignore"):  # polynomial hash, wrapping in uint64 is intended
        for n in range(lo, hi + 1):
            if b.size < n:
                break
            h = np.full(b.size - n + 1, n, dtype=np.uint64)
            for i in range(n):
                h = h * np.uint64(1_000_003) + b[i : b.size - n + 1 + i]
            parts.append(h)
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.unique(np.concatenate(parts), return_counts=True)


def _field_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple, set)):
        return " ; ".join(str(x) for x in v if x is not None)
    return str(v)


class IncidentIndex:
    """Online index of past incidents.

    ``add(doc_id, text, fields)``: ``text`` is the body; ``fields`` maps field names (title, company, product,
    keywords, ...) to strings or lists of strings. Re-adding a ``doc_id`` replaces the old document.
    ``query(text, k)`` returns ``[(doc_id, score, explanation)]`` best first.
    """

    def __init__(
        self,
        field_weights: Mapping[str, float] | None = None,
        k1: float = 1.2,
        b: float = 0.75,
        bigrams: bool = True,
        rerank: int = 30,
        ngram_weight: float = 0.3,
    ) -> None:
        self.field_weights = dict(DEFAULT_FIELD_WEIGHTS if field_weights is None else field_weights)
        self.k1, self.b = float(k1), float(b)
        self.bigrams = bool(bigrams)
        self.rerank = int(rerank)
        self.ngram_weight = float(ngram_weight)
        self._postings: dict[str, tuple[array, array]] = {}  # term -> (doc idx int32, weighted tf float32)
        self._dl = array("f")  # weighted document length
        self._alive = array("b")
        self._ids: list[str] = []
        self._docs: list[tuple[str, str, dict[str, Any]]] = []
        self._by_id: dict[str, int] = {}
        self._total_len = 0.0
        self._n_alive = 0

    def __len__(self) -> int:
        return self._n_alive

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._by_id

    def _weighted_tf(self, text: str, fields: Mapping[str, Any]) -> Counter:
        tf: Counter = Counter()
        parts = [("text", text)] + [(k, _field_text(v)) for k, v in fields.items()]
        for name, value in parts:
            w = self.field_weights.get(name, 0.0)
            if w <= 0 or not value:
                continue
            for tok in tokenize(value, self.bigrams):
                tf[tok] += w
        return tf

    def add(self, doc_id: str, text: str, fields: Mapping[str, Any] | None = None) -> None:
        fields = dict(fields or {})
        old = self._by_id.get(doc_id)
        if old is not None:  # replace: tombstone the old slot
            self._alive[old] = 0
            self._total_len -= self._dl[old]
            self._n_alive -= 1
        idx = len(self._ids)
        tf = self._weighted_tf(text, fields)
        for term, f in tf.items():
            p = self._postings.get(term)
            if p is None:
                p = self._postings[term] = (array("i"), array("f"))
            p[0].append(idx)
            p[1].append(f)
        length = float(sum(tf.values()))
        self._dl.append(length)
        self._alive.append(1)
        self._ids.append(doc_id)
        self._docs.append((doc_id, text, fields))
        self._by_id[doc_id] = idx
        self._total_len += length
        self._n_alive += 1

    def remove(self, doc_id: str) -> bool:
        """Forget a document (tombstoned; `compact` reclaims the space)."""
        i = self._by_id.pop(doc_id, None)
        if i is None:
            return False
        self._alive[i] = 0
        self._total_len -= self._dl[i]
        self._n_alive -= 1
        return True

    @property
    def tombstones(self) -> int:
        return len(self._ids) - self._n_alive

    def compact(self) -> None:
        """Rebuild from the live documents, in their order: bounded memory for a sliding index."""
        live = [self._docs[i] for i in range(len(self._ids)) if self._alive[i] and self._by_id.get(self._ids[i]) == i]
        fresh = IncidentIndex(self.field_weights, self.k1, self.b, self.bigrams, self.rerank, self.ngram_weight)
        for doc_id, text, fields in live:
            fresh.add(doc_id, text, fields)
        self.__dict__.update(fresh.__dict__)
        self.__dict__.pop("_ngram_cache", None)  # cached by document position, which just changed

    def fields(self, doc_id: str) -> dict[str, Any]:
        i = self._by_id.get(doc_id)
        return dict(self._docs[i][2]) if i is not None else {}

    # ---- scoring ------------------------------------------------------------------------------
    def _bm25(self, q_terms: Counter) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
        n_docs = len(self._ids)
        N = max(self._n_alive, 1)
        avgdl = self._total_len / N if self._total_len > 0 else 1.0
        dl = np.frombuffer(self._dl, dtype=np.float32).astype(np.float64)
        norm = self.k1 * (1.0 - self.b + self.b * dl / avgdl)
        alive = np.frombuffer(self._alive, dtype=np.int8).astype(bool)
        idx_parts, val_parts = [], []
        per_term: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, qtf in q_terms.items():
            p = self._postings.get(term)
            if p is None:
                continue
            docs = np.frombuffer(p[0], dtype=np.int32).copy()
            tfs = np.frombuffer(p[1], dtype=np.float32).astype(np.float64)
            df = int(alive[docs].sum())
            if df == 0:
                continue
            idf = math.log(1.0 + (N - df + 0.5) / (df + 0.5))
            contrib = (idf * qtf) * tfs * (self.k1 + 1.0) / (tfs + norm[docs])
            idx_parts.append(docs)
            val_parts.append(contrib)
            per_term[term] = (docs, contrib)
        if not idx_parts:
            return np.zeros(n_docs), per_term
        scores = np.bincount(np.concatenate(idx_parts), weights=np.concatenate(val_parts), minlength=n_docs)
        scores[~alive] = 0.0
        return scores, per_term

    def query(self, text: str, k: int = 5, explain_terms: int = 5) -> list[tuple[str, float, dict[str, Any]]]:
        """Best ``k`` documents for an incident description, best first: (doc_id, score, explanation).

        ``score`` is relative to this query (the best BM25 candidate has bm25_norm 1), in [0, 1];
        the explanation holds the raw BM25, the n-gram cosine and the query terms that contributed most
        (with their share of the document's BM25 score)."""
        if k <= 0 or self._n_alive == 0:
            return []
        surface: dict[str, str] = {}
        q_terms = Counter(tokenize(text, self.bigrams, surface))
        scores, per_term = self._bm25(q_terms)
        cand = np.flatnonzero(scores > 0)
        if cand.size == 0:
            return []
        n_cand = max(k, self.rerank)
        if cand.size > n_cand:
            cand = cand[np.argpartition(-scores[cand], n_cand - 1)[:n_cand]]
        bm = scores[cand] / float(scores[cand].max())
        use_ngrams = self.ngram_weight > 0 and cand.size > 1
        cos = self._ngram_cosine(text, cand) if use_ngrams else np.zeros(cand.size)
        final = (1.0 - self.ngram_weight) * bm + self.ngram_weight * cos if use_ngrams else bm
        out = []
        for j in np.argsort(-final, kind="stable")[:k]:
            i = int(cand[j])
            contrib: dict[str, float] = {}
            for term, (docs, vals) in per_term.items():
                pos = int(np.searchsorted(docs, i))  # postings are in index order
                if pos < docs.size and docs[pos] == i:
                    contrib[term] = float(vals[pos])
            total = sum(contrib.values()) or 1.0
            top = sorted(contrib.items(), key=lambda kv: -kv[1])[:explain_terms]
            out.append((self._ids[i], float(final[j]), {
                "bm25": float(scores[i]),
                "bm25_norm": float(bm[j]),
                "ngram_cosine": float(cos[j]) if use_ngrams else None,
                "top_terms": [(surface.get(t, t), round(c / total, 3)) for t, c in top],
            }))
        return out

    def _ngram_cosine(self, text: str, cand: np.ndarray) -> np.ndarray:
        """Cosine of sublinear-TF x IDF char n-gram vectors; IDF counted over the candidates + query."""
        q = _char_ngrams(text)
        docs = [self._doc_ngrams(int(i)) for i in cand]
        all_h, df = np.unique(np.concatenate([q[0]] + [d[0] for d in docs]), return_counts=True)
        idf = np.log((len(docs) + 1) / df) + 1.0

        def weights(v: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
            w = (1.0 + np.log(v[1])) * idf[np.searchsorted(all_h, v[0])]
            return w / (np.linalg.norm(w) or 1.0)

        qw = weights(q)
        out = np.zeros(len(docs))
        for j, d in enumerate(docs):
            _, qi, di = np.intersect1d(q[0], d[0], assume_unique=True, return_indices=True)
            out[j] = float(qw[qi] @ weights(d)[di])
        return out

    def _doc_ngrams(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """A document's char n-grams, cached (LRU): recomputing them for every candidate of every
        query was 75 % of a query's time at 10,000 documents (cProfile, bench/core.py --models)."""
        cache = self.__dict__.setdefault("_ngram_cache", OrderedDict())
        hit = cache.get(i)
        if hit is not None:
            cache.move_to_end(i)
            return hit
        v = cache[i] = _char_ngrams(self._ngram_source(i))
        while len(cache) > NGRAM_CACHE_DOCS:
            cache.popitem(last=False)
        return v

    def _ngram_source(self, i: int) -> str:
        _, text, fields = self._docs[i]
        extra = " ".join(_field_text(fields.get(f)) for f in ("title", "company", "product") if f in fields)
        return f"{extra} {text}"

    # ---- state --------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "params": {
                "field_weights": self.field_weights,
                "k1": self.k1,
                "b": self.b,
                "bigrams": self.bigrams,
                "rerank": self.rerank,
                "ngram_weight": self.ngram_weight,
            },
            "docs": [[d, t, f] for i, (d, t, f) in enumerate(self._docs) if self._alive[i]],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> IncidentIndex:
        if state.get("version") != VERSION:
            raise ValueError(f"state version {state.get('version')!r} != {VERSION!r}")
        idx = cls(**state["params"])
        for doc_id, text, fields in state["docs"]:
            idx.add(doc_id, text, fields)
        return idx
