"""Grouped cross-validation of the online alert classifier (models/classify.py).

    python -m pagerstream.models.eval.classify --data /work/shared/data/prometheus_alerts/rules_flat.jsonl \
        [--extra .../business_alerts/business_alerts_dev.jsonl] [--out DIR] [--quick]

Items: every line of --data (rules_flat.jsonl shape) plus every line of the --extra files
(business alerts: name, summary, description, severity, category). Without --extra, files named
business_alerts*.jsonl next to --data or in ../business_alerts/ are used (--no-extra: none).

Labels: severity as given (PagerDuty words folded: error -> critical). Category: `category` if
present, else the rules' `category4`; its "other" group is mapped per service (OTHER_CATEGORY:
APC UPS is power hardware -> infrastructure, Graph Node and LiteLLM are applications); an "other"
rule of an unlisted service has no category label and counts for severity only.

Split (models/eval/splits.py): 5 folds grouped by `service`, stratified by category. A business
alert has no service: each is its own group ("business/<name>"), so they spread over the folds.
Per fold a fresh classifier learns the other folds by streaming them through `learn` (PASSES
shuffled passes, fixed seeds), then predicts the held-out fold. Hyper-parameters are constants of
models/classify.py, the same for every fold. The baseline predicts the training folds' majority
class with that class's training share as its probability (so it abstains like the model would).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pagerstream.models.classify import CATEGORIES, AlertClassifier, features_from_rule, normalize_severity

from .splits import K, split_indices

PASSES = 3
QUICK_PASSES = 1
SEED = 20240601
OTHER_CATEGORY = {"APC UPS": "infrastructure", "Graph Node": "application", "LiteLLM": "application"}
GOAL_SEVERITY_MACRO_F1 = 0.50


@dataclass(frozen=True)
class Item:
    id: str
    group: str
    stratum: str
    features: dict[str, Any]
    category: str | None
    severity: str | None


def _category(rec: dict[str, Any]) -> str | None:
    c = rec.get("category") or rec.get("category4")
    if c == "other":
        c = OTHER_CATEGORY.get(str(rec.get("service")))
    return c if c in CATEGORIES else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError(f"{path}:{n}: not a JSON object")
                out.append(rec)
    return out


def find_extra(data: Path) -> list[Path]:
    here = sorted(data.parent.glob("business_alerts*.jsonl"))
    there = sorted((data.parent.parent / "business_alerts").glob("business_alerts*.jsonl"))
    return [p for p in here + there if p.resolve() != data.resolve()]


def load_items(data: Path, extra: Sequence[Path] | None = None) -> list[Item]:
    items: list[Item] = []
    for path in [data, *(extra or [])]:
        for i, rec in enumerate(_read_jsonl(path)):
            cat = _category(rec)
            service = rec.get("service")
            group = f"service/{service}" if service else f"business/{rec.get('name') or i}"
            items.append(
                Item(
                    id=f"{path.name}:{rec.get('id', i)}",
                    group=group,
                    stratum=cat or "none",
                    features=features_from_rule(rec),
                    category=cat,
                    severity=normalize_severity(rec.get("severity")),
                )
            )
    return items


# --- metrics ----------------------------------------------------------------------------------


def accuracy(y: Sequence[str], p: Sequence[str | None]) -> float:
    return sum(a == b for a, b in zip(y, p)) / len(y) if y else 0.0


def macro_f1(y: Sequence[str], p: Sequence[str | None]) -> float:
    """Mean F1 over the classes present in truth or prediction (sklearn's convention)."""
    labels = sorted({*y, *(x for x in p if x is not None)})
    f1s = []
    for c in labels:
        tp = sum(a == c and b == c for a, b in zip(y, p))
        fp = sum(a != c and b == c for a, b in zip(y, p))
        fn = sum(a == c and b != c for a, b in zip(y, p))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s) if f1s else 0.0


def _selective(
    y: Sequence[str], best: Sequence[str | None], conf: Sequence[float], th: float
) -> tuple[float, float]:
    kept = [(a, b) for a, b, c in zip(y, best, conf) if c >= th]
    cov = len(kept) / len(y) if y else 0.0
    acc = sum(a == b for a, b in kept) / len(kept) if kept else 0.0
    return cov, acc


# --- evaluation -------------------------------------------------------------------------------


def run_folds(items: list[Item], passes: int, k: int = K) -> list[dict[str, Any]]:
    splits = split_indices([it.group for it in items], [it.stratum for it in items], k)
    rows: list[dict[str, Any]] = []
    for f, (train_i, test_i) in enumerate(splits):
        train = [items[i] for i in train_i]
        test = [items[i] for i in test_i]
        if {it.group for it in train} & {it.group for it in test}:
            raise AssertionError(f"fold {f}: a group is on both sides")
        clf = AlertClassifier()
        rng = random.Random(SEED + f)
        for _ in range(passes):
            order = train[:]
            rng.shuffle(order)
            for it in order:
                clf.learn(it.features, category=it.category, severity=it.severity)
        base: dict[str, tuple[str, float]] = {}
        for target in ("category", "severity"):
            counts = Counter(getattr(it, target) for it in train if getattr(it, target))
            label, n = min(counts.items(), key=lambda t: (-t[1], t[0]))
            base[target] = (label, n / sum(counts.values()))
        for it in test:
            pr = clf.predict(it.features)
            rows.append(
                {
                    "id": it.id,
                    "group": it.group,
                    "fold": f,
                    "name": it.features["name"],
                    "category": it.category,
                    "severity": it.severity,
                    "pred_category": pr.category_best,
                    "pred_severity": pr.severity_best,
                    "category_probability": pr.category_probability,
                    "severity_probability": pr.severity_probability,
                    "category_abstained": pr.category_abstained,
                    "severity_abstained": pr.severity_abstained,
                    "baseline_category": base["category"][0],
                    "baseline_category_probability": base["category"][1],
                    "baseline_severity": base["severity"][0],
                    "baseline_severity_probability": base["severity"][1],
                    "reason": pr.reason,
                }
            )
    return rows


def score(rows: list[dict[str, Any]], th: dict[str, float]) -> dict[str, float]:
    m: dict[str, float] = {"n_items": float(len(rows))}
    for target in ("severity", "category"):
        rs = [r for r in rows if r[target]]
        y = [r[target] for r in rs]
        for who, key in (("", "pred_"), ("baseline_", "baseline_")):
            best = [r[key + target] for r in rs]
            conf = [r[f"{key}{target}_probability" if who else f"{target}_probability"] for r in rs]
            cov, sel = _selective(y, best, conf, th[target])
            m[f"{target}_{who}accuracy"] = accuracy(y, best)
            m[f"{target}_{who}macro_f1"] = macro_f1(y, best)
            m[f"{target}_{who}coverage"] = cov
            m[f"{target}_{who}selective_accuracy"] = sel
        counts = Counter(y)
        m[f"{target}_majority_share"] = max(counts.values()) / len(y) if y else 0.0
        m[f"{target}_n"] = float(len(y))
        m[f"{target}_threshold"] = th[target]
        for c in sorted(counts):
            m[f"{target}_f1_{c}"] = _class_f1(y, [r["pred_" + target] for r in rs], c)
    return m


def _class_f1(y: Sequence[str], p: Sequence[str | None], c: str) -> float:
    tp = sum(a == c and b == c for a, b in zip(y, p))
    fp = sum(a != c and b == c for a, b in zip(y, p))
    fn = sum(a == c and b != c for a, b in zip(y, p))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def evaluate(
    data: Path,
    out: Path | None = None,
    quick: bool = False,
    extra: Sequence[Path] | None = None,
    *,
    command: str | None = None,
) -> dict[str, float]:
    """Grouped 5-fold CV on `data` (+ business alerts). Returns the metrics; prints a table."""
    data = Path(data)
    extras = find_extra(data) if extra is None else [Path(p) for p in extra]
    items = load_items(data, extras)
    passes = QUICK_PASSES if quick else PASSES
    t0 = time.monotonic()
    rows = run_folds(items, passes)
    clf = AlertClassifier()
    th = {"category": clf.threshold_category, "severity": clf.threshold_severity}
    m = score(rows, th)
    m["passes"] = float(passes)
    m["folds"] = float(K)
    m["seconds"] = round(time.monotonic() - t0, 1)
    if out is not None:
        out = Path(out)
        path = out if out.suffix == ".jsonl" else out / "classify_predictions.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, sort_keys=True) + "\n")
        (path.parent / "classify_metrics.json").write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
    if command is None:
        parts = ["python", "-m", "pagerstream.models.eval.classify", "--data", str(data)]
        parts += [a for p in extras for a in ("--extra", str(p))] or ["--no-extra"]
        parts += ["--out", str(out)] if out is not None else []
        parts += ["--quick"] if quick else []
        command = "nice -n 10 " + " ".join(shlex.quote(p) for p in parts)
    _print_table(m, data, extras, command)
    return m


def _print_table(m: dict[str, float], data: Path, extras: Iterable[Path], command: str) -> None:
    def ok(cond: bool) -> str:
        return "PASS" if cond else "BELOW"

    print(f"command: {command}")
    print(
        f"data: {data} + extra {[str(p) for p in extras]}; {int(m['n_items'])} items, "
        f"{int(m['folds'])} folds grouped by service, {int(m['passes'])} pass(es), {m['seconds']}s"
    )
    print(f"{'target':9} {'metric':22} {'model':>7} {'baseline':>9}  goal")
    for t in ("severity", "category"):
        th = m[f"{t}_threshold"]
        lines = [
            ("accuracy", "accuracy", None),
            ("macro-F1", "macro_f1", None),
            (f"coverage @p>={th:.2f}", "coverage", None),
            ("accuracy when covered", "selective_accuracy", None),
        ]
        for label, key, _ in lines:
            goal = ""
            if t == "severity" and key == "accuracy":
                goal = f"> majority share {m['severity_majority_share']:.3f}: {ok(m['severity_accuracy'] > m['severity_majority_share'])}"
            if t == "severity" and key == "macro_f1":
                goal = (
                    f">= {GOAL_SEVERITY_MACRO_F1:.2f}: {ok(m['severity_macro_f1'] >= GOAL_SEVERITY_MACRO_F1)}"
                )
            if t == "category" and key == "accuracy":
                goal = f"(majority share {m['category_majority_share']:.3f})"
            base = m[f"{t}_baseline_{key}"]
            if key == "selective_accuracy" and m[f"{t}_baseline_coverage"] == 0:
                base_s = "n/a"
            else:
                base_s = f"{base:.3f}"
            print(f"{t:9} {label:22} {m[f'{t}_{key}']:7.3f} {base_s:>9}  {goal}")
        per = "  ".join(f"{k.split('_f1_')[1]}={v:.2f}" for k, v in m.items() if k.startswith(f"{t}_f1_"))
        print(f"{t:9} per-class F1: {per}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Grouped CV of the online alert classifier")
    ap.add_argument("--data", type=Path, required=True, help="JSONL in the rules_flat.jsonl shape")
    ap.add_argument("--extra", type=Path, action="append", help="more JSONL (business alerts); repeatable")
    ap.add_argument("--no-extra", action="store_true", help="do not look for business alerts next to --data")
    ap.add_argument("--out", type=Path, help="directory (or .jsonl file) for per-item predictions")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_PASSES} training pass instead of {PASSES}")
    args = ap.parse_args(argv)
    extra = [] if args.no_extra else args.extra
    m = evaluate(args.data, args.out, args.quick, extra)
    return (
        0
        if m["severity_accuracy"] > m["severity_majority_share"]
        and m["severity_macro_f1"] >= GOAL_SEVERITY_MACRO_F1
        else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())
