"""Retrieval of similar past incidents on public post-mortems.

Layout: ``DATA/icco_postmortems/*.md`` (YAML front matter + body) and ``DATA/retrieval_pairs_dev.jsonl``
({query, query_company, target_uuid, ...}). Indexed: body + title, company, product, keywords (never the
``summary`` field, which often copies the query). Queried with the query text only: ``query_company``
is not used, as production only has the incident text.

Latency: the corpus is padded to 10,000 documents with synthetic distractors (shuffled sentences of three
random post-mortems, words swapped for random vocabulary, company/title reassigned), and the same queries
are timed against it. The goal is checked on the mean; the measurement is printed, not asserted by tests.

    python -m pagerstream.models.eval.similar --data /work/shared/data/postmortems [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pagerstream.models.similar import VERSION, IncidentIndex

GOALS = {"r@1": 0.85, "mrr": 0.90}
GOAL_MS = 200.0
SCALE_DOCS = 10_000
QUICK_SCALE_DOCS = 2_000
INDEX_FIELDS = ("title", "company", "product", "keywords")


def load_corpus(data: Path) -> list[tuple[str, str, dict[str, Any]]]:
    docs = []
    for p in sorted((data / "icco_postmortems").glob("*.md")):
        raw = p.read_text(encoding="utf-8")
        meta: dict[str, Any] = {}
        body = raw
        m = re.match(r"^---\s*\n(.*?)\n---\s*\n?(.*)$", raw, re.DOTALL)
        if m:
            meta = yaml.safe_load(m.group(1)) or {}
            body = m.group(2)
        uuid = str(meta.get("uuid") or p.stem)
        fields = {f: meta.get(f) for f in INDEX_FIELDS if meta.get(f)}
        docs.append((uuid, body.strip(), fields))
    return docs


def load_queries(data: Path) -> list[dict[str, Any]]:
    with open(data / "retrieval_pairs_dev.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build(docs: list[tuple[str, str, dict[str, Any]]], **params: Any) -> IncidentIndex:
    idx = IncidentIndex(**params)
    for doc_id, text, fields in docs:
        idx.add(doc_id, text, fields)
    return idx


def rank_metrics(index: IncidentIndex, queries: list[dict[str, Any]], k: int = 10):
    r1 = r5 = rr = 0.0
    rows, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        res = index.query(q["query"], k=k)
        times.append((time.perf_counter() - t0) * 1000.0)
        ids = [d for d, _, _ in res]
        rank = ids.index(q["target_uuid"]) + 1 if q["target_uuid"] in ids else None
        r1 += rank == 1
        r5 += rank is not None and rank <= 5
        rr += 1.0 / rank if rank else 0.0
        rows.append({"query": q["query"], "target": q["target_uuid"], "rank": rank,
                     "top": [[d, round(s, 4), e["top_terms"]] for d, s, e in res[:5]]})
    n = max(len(queries), 1)
    return {"r@1": r1 / n, "r@5": r5 / n, "mrr": rr / n}, rows, times


def padded_corpus(docs: list[tuple[str, str, dict[str, Any]]], total: int, seed: int = 0):
    """``docs`` plus synthetic distractors up to ``total`` documents: each mixes shuffled sentences of
    three random post-mortems, swaps 20 % of the words for random vocabulary and gets a random
    company, a random title and half of one source's keywords."""
    rng = random.Random(seed)
    vocab = sorted({w for _, t, _ in docs for w in re.findall(r"[A-Za-z]{4,}", t)})
    companies = sorted({str(f.get("company")) for _, _, f in docs if f.get("company")})
    sentences = [re.split(r"(?<=[.!?])\s+", t) for _, t, _ in docs]
    out = list(docs)
    i = 0
    while len(out) < total:
        src = [rng.randrange(len(docs)) for _ in range(3)]
        sents = [x for j in src for x in sentences[j] if rng.random() < 0.35]
        rng.shuffle(sents)
        words = [rng.choice(vocab) if rng.random() < 0.2 else w for w in " ".join(sents).split()]
        kw = list(docs[src[0]][2].get("keywords") or [])
        rng.shuffle(kw)
        fields = {
            "title": " ".join(rng.choice(vocab) for _ in range(6)),
            "company": rng.choice(companies),
            "keywords": kw[: len(kw) // 2],
        }
        out.append((f"synthetic-{i:05d}", " ".join(words), fields))
        i += 1
    return out


def evaluate(data: Path, out: Path | None = None, quick: bool = False) -> dict[str, float]:
    data = Path(data)
    docs = load_corpus(data)
    queries = load_queries(data)
    if not docs or not queries:
        raise FileNotFoundError(f"no post-mortems or queries under {data}")
    index = build(docs)
    metrics, rows, _ = rank_metrics(index, queries)

    scale = QUICK_SCALE_DOCS if quick else SCALE_DOCS
    big_docs = padded_corpus(docs, scale)
    t0 = time.perf_counter()
    big = build(big_docs)
    build_s = time.perf_counter() - t0
    big_metrics, _, times = rank_metrics(big, queries)
    big_metrics, _, times2 = rank_metrics(big, queries)  # second pass: warm caches
    times = sorted(times + times2)
    metrics["ms_per_query"] = statistics.fmean(times)
    metrics["ms_p95"] = times[int(0.95 * (len(times) - 1))]
    metrics["scale_docs"] = float(len(big))
    metrics["build_s"] = build_s
    metrics["r@1_at_scale"] = big_metrics["r@1"]
    metrics["mrr_at_scale"] = big_metrics["mrr"]

    cmd = f"python -m pagerstream.models.eval.similar --data {data}" + (" --quick" if quick else "")

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "BELOW"

    print(f"incident index {VERSION}: {len(docs)} post-mortems, {len(queries)} queries (query text only)")
    print(f"{'metric':<16} {'value':>9}  goal")
    for name, key in (("R@1", "r@1"), ("R@5", "r@5"), ("MRR", "mrr")):
        goal = f">= {GOALS[key]:.2f}  {verdict(metrics[key] >= GOALS[key])}" if key in GOALS else ""
        print(f"{name:<16} {metrics[key]:9.4f}  {goal}".rstrip())
    print(f"{'ms/query':<16} {metrics['ms_per_query']:9.2f}  < {GOAL_MS:.0f} at {len(big):,} docs  "
          f"{verdict(metrics['ms_per_query'] < GOAL_MS)}  (p95 {metrics['ms_p95']:.2f} ms; "
          f"index built in {build_s:.1f} s)")
    print(f"{'R@1 / MRR':<16} {big_metrics['r@1']:.4f} / {big_metrics['mrr']:.4f} with the "
          f"{len(big) - len(docs):,} synthetic distractors in the index")
    print(f"command: {cmd}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "similar_metrics.json").write_text(json.dumps(metrics, indent=2))
        with open(out / "similar_predictions.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="postmortems directory")
    ap.add_argument("--out", type=Path, default=None, help="write per-query rankings here")
    ap.add_argument("--quick", action="store_true", help=f"time at {QUICK_SCALE_DOCS:,} documents")
    a = ap.parse_args(argv)
    m = evaluate(a.data, a.out, a.quick)
    ok = m["r@1"] >= GOALS["r@1"] and m["mrr"] >= GOALS["mrr"] and m["ms_per_query"] < GOAL_MS
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
