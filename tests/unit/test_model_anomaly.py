"""Streaming anomaly detector and the NAB scorer.

The scorer is checked against the published NAB detectors' numbers (needs shared/data/nab) and on
tiny hand-made corpora; the detector on causality, bounded state, state round trip and a spike."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from pagerstream.models import nab
from pagerstream.models.anomaly import VERSION, NonLearningRangeRule, RateAnomalyDetector, Score
from pagerstream.models.eval import anomaly as ev

NAB_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nab"
needs_nab = pytest.mark.skipif(
    not (NAB_DIR / "labels" / "combined_windows.json").exists(),
    reason=f"NAB development data not found at {NAB_DIR} (shared/data/nab beside the repo)",
)

EXPECTED = {  # nab/README.md: standard, reward_low_FP_rate, reward_low_FN_rate
    "ARTime": (73.50, 64.38, 79.09),
    "numenta": (68.04, 60.31, 72.67),
    "windowedGaussian": (41.99, 26.48, 49.28),
    "null": (0.0, 0.0, 0.0),
}


@needs_nab
def test_scorer_reproduces_published_detectors():
    got = ev.score_published(NAB_DIR)
    for det, want in EXPECTED.items():
        for profile, w in zip(nab.PROFILES, want):
            assert got[det][profile] == pytest.approx(w, abs=0.5), (det, profile, got[det][profile])


# ---------------------------------------------------------------------- tiny hand-made corpora

N = 1000  # rows; probation = 150
WIN = (500, 599)  # one window, 100 rows wide
T0 = np.datetime64("2020-01-01T00:00:00")


def _stamp(i: int) -> str:
    return str(T0 + np.timedelta64(300 * i, "s")).replace("T", " ")


def _make_corpus(root: Path, windows=(WIN,), n: int = N, name: str = "cat/series.csv") -> Path:
    (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rows = ["timestamp,value"] + [f"{_stamp(i)},{math.sin(i / 10):.6f}" for i in range(n)]
    (root / "data" / name).write_text("\n".join(rows) + "\n")
    wins = [[_stamp(a) + ".000000", _stamp(b) + ".000000"] for a, b in windows]
    (root / "labels" / "combined_windows.json").write_text(json.dumps({name: wins}))
    return root


def _raw(root: Path, detections: dict[int, float]) -> dict[str, float]:
    scores = np.zeros(N)
    for i, s in detections.items():
        scores[i] = s
    res = nab.score_detector({"cat/series.csv": scores}, root, detail=True)
    return {p: v["raw"] for p, v in res.items()}


def test_probation_length():
    assert nab.probation_length(1000) == 150
    assert nab.probation_length(100_000) == 750


def test_detection_at_window_start_scores_tp_weight(tmp_path):
    root = _make_corpus(tmp_path)
    raw = _raw(root, {WIN[0]: 1.0})
    assert raw["standard"] == pytest.approx(1.0)
    assert raw["reward_low_FN_rate"] == pytest.approx(1.0)
    norm = nab.score_detector({"cat/series.csv": np.r_[np.zeros(WIN[0]), 1.0, np.zeros(N - WIN[0] - 1)]}, root)
    assert norm["standard"] == pytest.approx(100.0)


def test_later_detection_scores_less_and_earliest_counts(tmp_path):
    root = _make_corpus(tmp_path)
    mid = _raw(root, {550: 1.0})["standard"]
    assert mid == pytest.approx(nab.scaled_sigmoid(-0.5) / nab.MAX_TP)
    end = _raw(root, {WIN[1]: 1.0})["standard"]
    assert 0.0 < end < 0.05
    # Several detections in one window: one TP, the earliest.
    assert _raw(root, {520: 1.0, 550: 1.0, 590: 1.0})["standard"] == pytest.approx(
        nab.scaled_sigmoid(-0.8) / nab.MAX_TP)


def test_false_positive_and_missed_window(tmp_path):
    root = _make_corpus(tmp_path)
    # Nothing detected: every window is a FN; the null score normalises to 0.
    raw = _raw(root, {})
    assert raw == {"standard": -1.0, "reward_low_FP_rate": -1.0, "reward_low_FN_rate": -2.0}
    # A TP at the start plus a FP far before the window: the optimiser keeps both.
    raw = _raw(root, {300: 1.0, WIN[0]: 1.0})
    assert raw["standard"] == pytest.approx(1.0 - 0.11)
    assert raw["reward_low_FP_rate"] == pytest.approx(1.0 - 0.22)
    assert raw["reward_low_FN_rate"] == pytest.approx(1.0 - 0.11)
    # FP alone: detecting costs more than missing, the optimiser picks "no detection"...
    assert _raw(root, {300: 1.0})["standard"] == pytest.approx(-1.0)
    # ...but at a fixed threshold the FP is charged A_FP on top of the missed window.
    lab = nab.label_file(np.array([T0 + np.timedelta64(300 * i, "s") for i in range(N)]),
                         nab.load_windows(root)["cat/series.csv"])
    scores = np.zeros(N)
    scores[300] = 1.0
    sw = nab.build_sweep([(scores, lab)])
    assert nab.score_at(sw, 1.0, nab.PROFILES["standard"]) == pytest.approx(-1.0 - 0.11)
    # Just after a window a FP costs less than far away.
    scores[:] = 0.0
    scores[WIN[1] + 1] = 1.0
    sw = nab.build_sweep([(scores, lab)])
    assert -1.0 - 0.11 < nab.score_at(sw, 1.0, nab.PROFILES["standard"]) < -1.0


def test_probation_is_ignored(tmp_path):
    root = _make_corpus(tmp_path)
    assert _raw(root, {10: 1.0, 149: 1.0, WIN[0]: 1.0})["standard"] == pytest.approx(1.0)
    assert _raw(root, {150: 1.0, WIN[0]: 1.0})["standard"] == pytest.approx(1.0 - 0.11)


def test_optimiser_matches_brute_force(tmp_path):
    root = _make_corpus(tmp_path, windows=((300, 349), (500, 599), (800, 829)))
    rng = np.random.default_rng(7)
    scores = np.round(rng.random(N) ** 8, 3)
    scores[[310, 505, 820]] = [0.9, 0.4, 0.95]
    lab = nab.label_file(np.array([T0 + np.timedelta64(300 * i, "s") for i in range(N)]),
                         nab.load_windows(root)["cat/series.csv"])
    sw = nab.build_sweep([(scores, lab)])
    for prof in nab.PROFILES.values():
        _, raw, _ = nab.optimise(sw, prof)
        brute = max([nab.score_at(sw, t, prof) for t in np.unique(scores)] + [-prof["fn"] * 3])
        assert raw == pytest.approx(brute)


def test_runner_writes_nab_layout_and_rescoring_matches(tmp_path):
    root = _make_corpus(tmp_path / "nab")
    corpus = nab.load_corpus(root)
    scores, pps = nab.run_detector(RateAnomalyDetector, corpus, tmp_path / "out", "rateAnomaly")
    path = tmp_path / "out" / "rateAnomaly" / "cat" / "rateAnomaly_series.csv"
    assert path.exists() and path.read_text().startswith("timestamp,anomaly_score\n")
    assert pps > 0
    assert nab.score_detector(tmp_path / "out" / "rateAnomaly", root) == nab.score_detector(scores, root)


def test_evaluate_plumbing_on_small_corpus(tmp_path, capsys):
    root = _make_corpus(tmp_path / "nab")
    res = ev.evaluate(root, tmp_path / "out")
    for key in ("detector.standard", "baseline.low_FP", "margin.low_FN", "detector.points_per_s"):
        assert key in res
    printed = capsys.readouterr().out
    assert "rateAnomaly" in printed and "margin over the rule" in printed
    assert (tmp_path / "out" / ev.BASELINE_NAME / "cat" / f"{ev.BASELINE_NAME}_series.csv").exists()


# ----------------------------------------------------------------------------------- detector


def _series(n: int, seed: int = 1) -> list[tuple[float, float]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        v = 50 + 20 * math.sin(2 * math.pi * i / 288) + rnd.gauss(0, 3)
        if rnd.random() < 0.002:
            v += rnd.choice([-1, 1]) * rnd.uniform(50, 500)
        if 3000 <= i % 20000 < 3100:
            v = 7.0  # flat stretch
        out.append((1.6e9 + 300 * i, v))
    return out


def _run(det, pts):
    return [det.update(t, v) for t, v in pts]


def test_detector_is_causal():
    pts = _series(3000)
    a = _run(RateAnomalyDetector(), pts)
    future = [(t + 300 * 3000, 1e6 * (i % 3)) for i, (t, _) in enumerate(pts[:500])]
    b = _run(RateAnomalyDetector(), pts + future)
    assert [s.score for s in a] == [s.score for s in b[:3000]]
    assert [s.reason for s in a] == [s.reason for s in b[:3000]]


def test_scores_in_unit_interval_with_reasons():
    pts = _series(20_000) + [(2e9, float("nan")), (2e9 + 300, 1e300), (2e9 + 600, -1e300), (2e9 + 900, 0.0)]
    det = RateAnomalyDetector()
    for t, v in pts:
        s = det.update(t, v)
        assert isinstance(s, Score)
        assert 0.0 <= s.score <= 1.0
        assert isinstance(s.reason, dict) and "component" in s.reason
        json.dumps(s.reason)


def test_state_is_bounded_and_json():
    det = RateAnomalyDetector()
    sizes = []
    for i, (t, v) in enumerate(_series(100_000, seed=3)):
        det.update(t, v)
        if i + 1 in (5_000, 100_000):
            sizes.append(len(json.dumps(det.to_state())))
    assert sizes[1] <= 8_000  # 24 hour slots + 12 + 20 floats + 3 envelopes
    assert sizes[1] <= sizes[0] * 1.2


def test_state_round_trip_gives_identical_scores():
    pts = _series(8000, seed=5)
    # Spikes just before and just after the snapshot, so the refractory memory matters too.
    for i, bump in ((4995, 400.0), (5005, 390.0), (5030, 600.0)):
        pts[i] = (pts[i][0], pts[i][1] + bump)
    det = RateAnomalyDetector()
    _run(det, pts[:5000])
    state = json.loads(json.dumps(det.to_state()))
    assert state["version"] == VERSION
    twin = RateAnomalyDetector.from_state(state)
    assert [(s.score, s.reason) for s in _run(det, pts[5000:])] == [
        (s.score, s.reason) for s in _run(twin, pts[5000:])]
    with pytest.raises(ValueError):
        RateAnomalyDetector.from_state({**state, "version": "other"})


def test_spike_in_flat_series_scores_high_with_reason():
    rnd = random.Random(11)
    det = RateAnomalyDetector()
    quiet = [det.update(1.6e9 + 60 * i, 10 + rnd.gauss(0, 0.1)).score for i in range(3000)]
    s = det.update(1.6e9 + 60 * 3000, 20.0)
    assert s.score > 0.5
    assert max(quiet[500:]) < s.score / 2
    assert s.reason["component"] == "value"
    lo, hi = s.reason["expected"]
    assert lo < 10 < hi < 20
    assert s.reason["observed"] == 20.0 and s.reason["deviation"] > 1
    # The next point of the same excursion is not reported again (only the first detection counts).
    assert det.update(1.6e9 + 60 * 3001, 20.5).score < 0.1


def test_range_rule_baseline():
    rule = NonLearningRangeRule()
    got = [rule.update(i, v).score for i, v in enumerate([5, 6, 4, 5.5, 7, 5, 3])]
    assert got[0] == got[3] == got[5] == 0.0
    assert all(g > 0 for g in (got[1], got[2], got[4], got[6]))
    twin = NonLearningRangeRule.from_state(json.loads(json.dumps(rule.to_state())))
    assert twin.update(7, 8).score == rule.update(7, 8).score > 0
