"""NAB evaluation of the streaming anomaly detector against the non-learning range rule.

    python -m pagerstream.models.eval.anomaly --data /work/shared/data/nab [--out DIR] [--quick]

The full run (all files) is the headline number; ``--quick`` scores a fixed subset (every 2nd file in
name order) for CI, where the goals are only indicative.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from pagerstream.models import nab
from pagerstream.models.anomaly import VERSION, NonLearningRangeRule, RateAnomalyDetector

PUBLISHED = ("ARTime", "numenta", "windowedGaussian")
PROFILE_SHORT = {"standard": "standard", "reward_low_FP_rate": "low_FP", "reward_low_FN_rate": "low_FN"}
GOALS = {"standard": 65.0, "reward_low_FP_rate": 55.0}
MIN_MARGIN = 5.0  # over the non-learning baseline, every profile
MIN_POINTS_PER_S = 5000.0
QUICK_EVERY = 2

DETECTOR_NAME = "rateAnomaly"
BASELINE_NAME = "nonLearningRange"


def quick_files(data: Path) -> list[str]:
    return nab.list_files(data)[::QUICK_EVERY]


def _score(scores: dict[str, np.ndarray], corpus: list[nab.NabFile]) -> dict[str, float]:
    sw = nab.build_sweep((scores[f.name], nab.label_file(f.timestamps, f.windows)) for f in corpus)
    return {p: nab.optimise(sw, prof)[2] for p, prof in nab.PROFILES.items()}


def score_published(data: Path) -> dict[str, dict[str, float]]:
    """NAB scores of the published detectors in ``<data>/results`` plus the null detector."""
    data = Path(data)
    out = {det: nab.score_detector(data / "results" / det, data) for det in PUBLISHED}
    corpus = nab.load_corpus(data)
    out["null"] = _score({f.name: np.full(len(f.values), 0.5) for f in corpus}, corpus)
    return out


def evaluate(data: Path, out: Path | None = None, quick: bool = False) -> dict[str, float]:
    data = Path(data)
    names = quick_files(data) if quick else None
    corpus = nab.load_corpus(data, names)
    t0 = time.perf_counter()
    det_scores, det_pps = nab.run_detector(RateAnomalyDetector, corpus, out, DETECTOR_NAME)
    base_scores, base_pps = nab.run_detector(NonLearningRangeRule, corpus, out, BASELINE_NAME)
    det = _score(det_scores, corpus)
    base = _score(base_scores, corpus)
    res: dict[str, float] = {}
    for p in nab.PROFILES:
        s = PROFILE_SHORT[p]
        res[f"detector.{s}"] = det[p]
        res[f"baseline.{s}"] = base[p]
        res[f"margin.{s}"] = det[p] - base[p]
    res["detector.points_per_s"] = det_pps
    res["baseline.points_per_s"] = base_pps
    res["files"] = float(len(corpus))
    res["points"] = float(sum(len(f.values) for f in corpus))
    res["windows"] = float(sum(len(f.windows) for f in corpus))
    res["seconds"] = time.perf_counter() - t0
    _print(res, quick)
    return res


def _print(res: dict[str, float], quick: bool) -> None:
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "BELOW"

    scope = "quick subset (goals indicative)" if quick else "all files"
    print(f"NAB evaluation of {VERSION}: {int(res['files'])} files, {int(res['points'])} points, "
          f"{int(res['windows'])} windows, {scope}")
    print(f"{'':22s}{'standard':>10s}{'low_FP':>10s}{'low_FN':>10s}")
    for who in ("detector", "baseline", "margin"):
        label = {"detector": DETECTOR_NAME, "baseline": BASELINE_NAME + " (rule)",
                 "margin": "margin"}[who]
        print(f"{label:22s}" + "".join(f"{res[f'{who}.{s}']:10.2f}" for s in PROFILE_SHORT.values()))
    print("goals:")
    for p, goal in GOALS.items():
        v = res[f"detector.{PROFILE_SHORT[p]}"]
        print(f"  {PROFILE_SHORT[p]:9s} >= {goal:5.1f}: {v:6.2f}  {verdict(v >= goal)}")
    m = min(res[f"margin.{s}"] for s in PROFILE_SHORT.values())
    print(f"  margin over the rule >= {MIN_MARGIN:.0f} (every profile): {m:6.2f}  {verdict(m >= MIN_MARGIN)}")
    pps = res["detector.points_per_s"]
    print(f"  points/s (one core) >= {MIN_POINTS_PER_S:.0f}: {pps:9.0f}  {verdict(pps >= MIN_POINTS_PER_S)}")
    print(f"  (rule: {res['baseline.points_per_s']:.0f} points/s; wall {res['seconds']:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="NAB-layout directory (data/, labels/)")
    ap.add_argument("--out", type=Path, default=None, help="write NAB-layout results here")
    ap.add_argument("--quick", action="store_true", help=f"one file in {QUICK_EVERY} only")
    ap.add_argument("--published", action="store_true", help="also score <data>/results (published detectors)")
    args = ap.parse_args(argv)
    if args.published:
        pub = score_published(args.data)
        print(f"{'published detector':22s}{'standard':>10s}{'low_FP':>10s}{'low_FN':>10s}")
        for det, sc in pub.items():
            print(f"{det:22s}" + "".join(f"{sc[p]:10.2f}" for p in nab.PROFILES))
    evaluate(args.data, args.out, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
