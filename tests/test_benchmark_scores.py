"""The benchmarks' shared scoring: the paired bootstrap agrees with the per-attribute scores it resamples."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from benchmarks.quality.scores import paired_bootstrap, rare_class_f1, score_table
from benchmarks.quality.tag_decisions import TAUS, decide, log_prior, tune, tuned_predictions

ATTRIBUTES = ["colour", "kind"]


def catalogue(n: int = 120, seed: int = 0) -> tuple[dict, dict, dict]:
    """Truth (some unknown) and two predictors: ``a`` right 90% of the time, ``b`` 70%."""
    rng = random.Random(seed)
    labels = {"colour": ["red", "blue", "green", "tan"], "kind": ["shoe", "bag", "watch"]}
    truth = {a: [rng.choice(v) if rng.random() > 0.1 else None for _ in range(n)] for a, v in labels.items()}

    def predictor(accuracy: float) -> dict[str, list[str]]:
        return {
            a: [t if t is not None and rng.random() < accuracy else rng.choice(labels[a]) for t in truth[a]]
            for a in ATTRIBUTES
        }

    return truth, predictor(0.9), predictor(0.7)


def test_observed_difference_is_the_score_table_difference() -> None:
    truth, a, b = catalogue()
    result = paired_bootstrap(truth, a, b, ATTRIBUTES, samples=500)
    expected = score_table(truth, a, ATTRIBUTES)["mean_macro_f1"] - score_table(truth, b, ATTRIBUTES)["mean_macro_f1"]
    assert result["diff"] == pytest.approx(expected, abs=1e-12)
    assert result["ci95_low"] < result["diff"] < result["ci95_high"]
    assert result["diff"] > 0.1 and result["ci95_low"] > 0 and result["share_ahead"] > 0.99


def test_same_predictions_give_a_zero_interval_and_the_order_flips_the_sign() -> None:
    truth, a, b = catalogue(seed=1)
    same = paired_bootstrap(truth, a, a, ATTRIBUTES, samples=200)
    assert same["diff"] == same["ci95_low"] == same["ci95_high"] == 0.0 and same["share_ahead"] == 0.0
    forward = paired_bootstrap(truth, a, b, ATTRIBUTES, samples=200, seed=3)
    backward = paired_bootstrap(truth, b, a, ATTRIBUTES, samples=200, seed=3)
    assert backward["diff"] == pytest.approx(-forward["diff"])
    assert backward["ci95_high"] == pytest.approx(-forward["ci95_low"])


def test_several_runs_of_a_method_are_scored_by_their_mean() -> None:
    truth, a, b = catalogue(seed=2)
    _, c, _ = catalogue(seed=2)  # same truth, another run of the 90% predictor
    c = {k: list(reversed(v)) for k, v in c.items()}  # scrambled: a worse run
    mean = paired_bootstrap(truth, [a, c], b, ATTRIBUTES, samples=300, seed=4)
    score = {name: score_table(truth, p, ATTRIBUTES)["mean_macro_f1"] for name, p in (("a", a), ("b", b), ("c", c))}
    assert mean["diff"] == pytest.approx((score["a"] + score["c"]) / 2 - score["b"], abs=1e-12)
    alone = paired_bootstrap(truth, [a], b, ATTRIBUTES, samples=300, seed=4)
    assert alone == paired_bootstrap(truth, a, b, ATTRIBUTES, samples=300, seed=4)


def test_rare_class_f1_scores_the_test_classes_with_few_training_products() -> None:
    truth = {"colour": ["red", "red", "tan", "tan", None, "blue"], "kind": ["shoe", "bag", "bag", "shoe", "bag", "bag"]}
    preds = {
        "colour": ["red", "tan", "tan", "red", "red", "red"],
        "kind": ["shoe", "bag", "shoe", "shoe", "bag", "bag"],
    }
    counts = {"colour": {"red": 50, "tan": 3, "blue": 19}, "kind": {"shoe": 5, "bag": 20}}
    rare = rare_class_f1(truth, preds, ["colour", "kind"], counts)
    # tan: 1 right of 2 true and 2 predicted -> 0.5; blue: never predicted -> 0; shoe: 2 of 2 true, 3 predicted -> 0.8
    assert rare["per_class"] == pytest.approx({"colour=blue": 0.0, "colour=tan": 0.5, "kind=shoe": 0.8})
    assert rare["classes"] == 3 and rare["mean_f1"] == pytest.approx(1.3 / 3) and rare["below"] == 20


def test_the_decision_rule_tuned_on_validation_names_rare_classes_the_argmax_misses() -> None:
    import numpy as np

    vocabulary, counts = ["common", "rare"], {"kind": {"common": 990, "rare": 10}}
    # the rare class is the truth of every third product, where the model gives it 0.3: the argmax never names it
    probs = np.array([[0.7, 0.3] if k % 3 == 0 else [0.9, 0.1] for k in range(30)])
    ids = [f"p{k}" for k in range(30)]
    truth = {i: {"kind": "rare" if k % 3 == 0 else "common"} for k, i in enumerate(ids)}
    prior = log_prior(vocabulary, counts["kind"])
    assert decide(probs, vocabulary, prior, 0.0).count("rare") == 0
    chosen = tune((ids, {"kind": probs}), truth, {"kind": vocabulary}, counts)["kind"]
    # log(0.3/0.7) + tau * 4.6 > 0 from tau 0.19; log(0.1/0.9) + tau * 4.6 < 0 below tau 0.48: 0.25 is the first
    assert chosen == {"tau": 0.25, "val_macro_f1": 1.0, "val_macro_f1_argmax": pytest.approx(0.4, abs=1e-4)}
    assert 0.25 in TAUS and tuned_predictions((ids, {"kind": probs}), {"kind": chosen}, {"kind": vocabulary},
                                              counts)["p3"] == {"kind": "rare"}  # fmt: skip


def test_caption_runs_made_apart_merge_into_one_table(tmp_path: Path) -> None:
    import json

    from benchmarks.caption_quality import merge

    def run(name: str, method: str, seed: int, cider: float, consensus: float, **flags: object) -> str:
        result = {"bleu4": 0.1, "cider": cider, "exact": 0.0, "consensus": {"bleu4": 0.1, "cider": consensus}}
        settings = {"seed": [seed], "retrieval": 0, "word_dropout": 0.0, "out": "x.json", **flags}
        path = tmp_path / name
        command = (
            f"python -m benchmarks.caption_quality --data /somewhere/fashion-products --out /tmp/{name} --seed {seed}"
        )
        payload = {"machine": {"command": command}, "settings": settings, "results": {method: result}}
        path.write_text(json.dumps(payload))
        return str(path)

    files = [run("p0.json", "hf_vision_encoder_decoder", 0, 1.0, 1.2), run("p1.json", "hf_vision_encoder_decoder", 1,
             1.2, 1.4), run("l0.json", "late", 0, 1.1, 1.5), run("l1.json", "late", 1, 1.3, 1.7),
             run("e0.json", "early", 0, 0.9, 1.1, retrieval=3)]  # fmt: skip
    merge(files, str(tmp_path / "merged.json"))
    out = json.loads((tmp_path / "merged.json").read_text())
    assert out["means"]["late"] == {"greedy": pytest.approx(1.2), "consensus": pytest.approx(1.6)}
    assert out["means"]["early --retrieval 3"]["greedy"] == pytest.approx(0.9)  # per-method flags name the row
    late = next(line for line in out["table"].splitlines() if line.startswith("| late |"))
    # greedy 1.2 / peer 1.1; consensus 1.6 / peer's consensus 1.3, and / peer greedy 1.1
    assert "| 1.09 |" in late and "| 1.23 | 1.45 |" in late
    assert all("out" not in r["settings"] for r in out["runs"])  # no local paths kept
    assert (
        out["runs"][0]["machine"]["command"]
        == "python -m benchmarks.caption_quality --data data/fashion-products --seed 0"
    )
    with pytest.raises(SystemExit, match="seed 0 again"):
        merge([files[2], files[2]], str(tmp_path / "twice.json"))
    # Runs of two lengths: every trained row says its --epochs, and ratios divide by the peer row with the best
    # greedy mean (here the 3-epoch peer, 1.1, not the 4-epoch one, 0.8).
    longer = [run("p4.json", "hf_vision_encoder_decoder", 0, 0.8, 1.0, epochs=4),
              run("l4.json", "late", 0, 1.32, 1.65, epochs=4, self_critical='{"start_epoch": 3}')]  # fmt: skip
    files = [
        run(f"{n}3.json", m, s, c, k, epochs=3)
        for n, m, s, c, k in [
            ("p0", "hf_vision_encoder_decoder", 0, 1.0, 1.2),
            ("p1", "hf_vision_encoder_decoder", 1, 1.2, 1.4),
        ]
    ]
    merge([*files, *longer], str(tmp_path / "budgets.json"))
    out = json.loads((tmp_path / "budgets.json").read_text())
    assert out["peer_row"] == "hf_vision_encoder_decoder --epochs 3"
    assert set(out["means"]) == {out["peer_row"], "hf_vision_encoder_decoder --epochs 4",
                                 'late --epochs 4 --self_critical {"start_epoch": 3}'}  # fmt: skip
    late = next(line for line in out["table"].splitlines() if line.startswith("| late --epochs 4"))
    assert "| 1.3200 | 1.20 |" in late and "| 1.27 | 1.50 |" in late  # 1.32 / 1.1; 1.65 / 1.3 and / 1.1
