"""The model card: ``fit`` writes it beside the checkpoints, ``test --ckpt_path`` completes it in the same run folder
(no new logger version), with scores, per-class F1, calibration and readable plots; files not of ours are refused."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import SAMPLE_IMAGES, SAMPLE_MANIFEST, TINY_CONFIGS, cli_error
from PIL import Image

from multimodal.cli import main
from multimodal.data.dataset import IGNORE_INDEX
from multimodal.model_card.card import CARD_JSON, CARD_MD, class_summary, evaluation_results, new_card, split_scores
from multimodal.model_card.markdown import render
from multimodal.model_card.plots import SOFTWARE, folded_confusion
from multimodal.model_card.report import ClassReport, EvaluationReport
from multimodal.tagging.metrics import TaggingMetrics


@pytest.fixture(scope="module", autouse=True)
def command_line() -> Iterator[None]:
    """The arguments go to ``main`` explicitly; sys.argv holds only the program name, as in Lightning's CLI tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["multimodal"])
        yield


def run_args(config: Path, root: Path, name: str, *extra: str) -> list[str]:
    """The tiny config on the committed sample, logging to ``root/name/version_N`` as the real configs do."""
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root), "name": name}}
    return ["--config", str(config), "--data.init_args.manifest", str(SAMPLE_MANIFEST),
            "--data.init_args.image_root", str(SAMPLE_IMAGES), "--trainer.default_root_dir", str(root),
            "--trainer.logger", json.dumps(logger), *extra]  # fmt: skip


def fit_and_test(task: str, root: Path) -> tuple[Path, Path, dict, dict]:
    """``fit`` (3 steps) then ``test`` of its checkpoint: (run folder, checkpoint, card after fit, card after test)."""
    fit = run_args(TINY_CONFIGS[task], root, task, "--trainer.enable_checkpointing", "true",
                   "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1")  # fmt: skip
    main(["fit", *fit])
    (run,) = (root / task).iterdir()
    (ckpt,) = (run / "checkpoints").iterdir()
    after_fit = json.loads((run / CARD_JSON).read_text())
    main(["test", *run_args(TINY_CONFIGS[task], root, task, "--ckpt_path", str(ckpt))])
    assert [p.name for p in (root / task).iterdir()] == [run.name]  # test opened no new version folder
    return run, ckpt, after_fit, json.loads((run / CARD_JSON).read_text())


@pytest.fixture(scope="module")
def tagger_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, dict]:
    return fit_and_test("tagger", tmp_path_factory.mktemp("card"))


def assert_plot(path: Path) -> None:
    assert path.stat().st_size > 8_000, path
    with Image.open(path) as img:
        assert img.format == "PNG" and img.info.get("Software") == SOFTWARE
        assert img.size[0] >= 400 and img.size[1] >= 250


def test_fit_writes_the_card_beside_its_checkpoints(tagger_run: tuple[Path, Path, dict, dict]) -> None:
    run, ckpt, card, _ = tagger_run
    data = card["data"]
    assert data["manifest"] == str(SAMPLE_MANIFEST)
    assert data["sha256"] == hashlib.sha256(SAMPLE_MANIFEST.read_bytes()).hexdigest()
    assert sum(data["rows"].values()) == len(pd.read_csv(SAMPLE_MANIFEST)) and data["rows"]["test"] > 0
    assert data["skipped_products"] == 0 and data["skipped_photos"] == 0
    stored = yaml.safe_load((TINY_CONFIGS["tagger"]).read_text())
    assert card["settings"]["model"]["class_path"] == stored["model"]["class_path"]
    assert card["settings"]["data"]["init_args"]["attributes"] == ["gender", "masterCategory", "season"]
    training = card["training"]
    assert training["status"] == "finished" and training["steps"] == 3
    assert training["best_checkpoint"] == f"checkpoints/{ckpt.name}"
    assert card["evaluations"] == {}
    assert ckpt.parent.parent == run and (run / CARD_MD).is_file()


def test_test_completes_the_card_in_the_run_folder(tagger_run: tuple[Path, Path, dict, dict]) -> None:
    run, ckpt, _, card = tagger_run
    entry = card["evaluations"][f"test/{ckpt.stem}"]
    assert entry["status"] == "done" and entry["checkpoint"] == f"checkpoints/{ckpt.name}" and entry["step"] == 3
    assert entry["folder"] == f"test/{ckpt.stem}"
    header = (run / entry["folder"] / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test/mean_acc" in header  # the logger writes beside the checkpoint too
    assert 0.0 <= entry["scores"]["mean_acc"] <= 1.0 and "loss" in entry["scores"]
    for attribute in ("gender", "masterCategory", "season"):
        scores, summary = entry["groups"][attribute], entry["classes"][attribute]
        assert set(scores) == {"acc", "macro_f1", "ece"}
        assert summary["ece"] == pytest.approx(scores["ece"], abs=1e-6)  # the logged ECE is the reported one
        supports = [r["support"] for r in summary["most_frequent"]]
        assert supports == sorted(supports, reverse=True) and all(0.0 <= r["f1"] <= 1.0 for r in summary["worst"])
        f1s = [r["f1"] for r in summary["worst"]]
        assert f1s == sorted(f1s)
        names = [Path(p).name for p in entry["plots"][attribute]]
        assert names == [f"{attribute}-confusion.png", f"{attribute}-f1.png", f"{attribute}-reliability.png"]
        for plot in entry["plots"][attribute]:
            assert_plot(run / plot)
    # Every test product with a label seen in training is counted once in the support of its gender.
    unseen = sum(entry["data"]["unseen_labels"].get("test", {}).get("gender", {}).values())
    gender = entry["classes"]["gender"]
    assert gender["classes"] <= 10 and sum(r["support"] for r in gender["most_frequent"]) == (
        entry["data"]["rows"]["test"] - unseen
    )
    text = (run / CARD_MD).read_text()
    for section in ("## Training data", entry["data"]["sha256"], "## Training", f"## test: `checkpoints/{ckpt.name}`",
                    "### Per attribute", "| gender |", "Every class with examples", "calibration error (ECE)",
                    "## Settings", f"]({entry['plots']['gender'][0]})"):  # fmt: skip
        assert section in text, section


def test_a_second_test_of_the_checkpoint_replaces_our_own_outputs(tagger_run: tuple[Path, Path, dict, dict]) -> None:
    run, ckpt, _, card = tagger_run
    root = run.parent.parent
    main(["test", *run_args(TINY_CONFIGS["tagger"], root, "tagger", "--ckpt_path", str(ckpt))])
    again = json.loads((run / CARD_JSON).read_text())
    assert list(again["evaluations"]) == list(card["evaluations"])
    assert again["evaluations"][f"test/{ckpt.stem}"]["scores"] == card["evaluations"][f"test/{ckpt.stem}"]["scores"]
    assert [p.name for p in run.parent.iterdir()] == [run.name]


def test_validate_adds_its_own_entry(tagger_run: tuple[Path, Path, dict, dict]) -> None:
    run, ckpt, _, card = tagger_run
    root = run.parent.parent
    main(["validate", *run_args(TINY_CONFIGS["tagger"], root, "tagger", "--ckpt_path", str(ckpt))])
    evaluations = json.loads((run / CARD_JSON).read_text())["evaluations"]
    assert set(evaluations) == {*card["evaluations"], f"validate/{ckpt.stem}"}
    entry = evaluations[f"validate/{ckpt.stem}"]
    assert entry["status"] == "done" and set(entry["groups"]["season"]) == {"acc", "macro_f1", "ece"}
    unseen = sum(entry["data"]["unseen_labels"].get("val", {}).get("gender", {}).values())
    supports = [r["support"] for r in entry["classes"]["gender"]["most_frequent"]]
    assert sum(supports) == entry["data"]["rows"]["val"] - unseen  # the validation split, not the test split
    assert (run / "validate" / ckpt.stem / "metrics.csv").is_file()
    assert [p.name for p in run.parent.iterdir()] == [run.name]


def test_files_not_of_ours_are_refused_before_testing(
    tagger_run: tuple[Path, Path, dict, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ckpt, _, _ = tagger_run
    copy = tmp_path / "run" / "checkpoints" / ckpt.name
    copy.parent.mkdir(parents=True)
    shutil.copy(ckpt, copy)
    mine = tmp_path / "run" / CARD_MD
    mine.write_text("# My own notes\n")
    args = ["test", *run_args(TINY_CONFIGS["tagger"], tmp_path, "logs", "--ckpt_path", str(copy))]
    assert "MODEL_CARD.md exists and was not written by multimodal" in cli_error(args, capsys)
    assert mine.read_text() == "# My own notes\n"
    mine.unlink()
    (tmp_path / "run" / "test" / copy.stem).mkdir(parents=True)
    (tmp_path / "run" / "test" / copy.stem / "notes.txt").write_text("mine")
    assert "holds files that are not a test output of multimodal" in cli_error(args, capsys)
    assert not (tmp_path / "run" / CARD_JSON).exists() and not (tmp_path / "logs").exists()


def test_fit_refuses_a_run_folder_with_a_card_not_of_ours(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CARD_JSON).write_text('{"mine": true}')
    spec = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(tmp_path / "run" / "checkpoints")}}  # fmt: skip
    checkpoints = ["--trainer.enable_checkpointing", "true", "--trainer.callbacks", json.dumps([spec])]
    args = ["fit", *run_args(TINY_CONFIGS["tagger"], tmp_path, "logs", *checkpoints)]
    assert "model_card.json exists and is not a model card of multimodal" in cli_error(args, capsys)
    assert (tmp_path / "run" / CARD_JSON).read_text() == '{"mine": true}'
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the first step


def test_retriever_card_has_recall_at_k_and_its_curve(tmp_path: Path) -> None:
    run, ckpt, _, card = fit_and_test("retriever", tmp_path)
    entry = card["evaluations"][f"test/{ckpt.stem}"]
    curve = entry["curves"]["recall_at_k"]
    t2p = dict(zip(curve["x"], curve["series"]["text -> product"], strict=True))
    for k in (1, 5, 10):
        assert t2p[k] == pytest.approx(entry["scores"][f"t2p_recall@{k}"])  # the curve is the logged recall@K
    values = curve["series"]["product -> text"]
    assert values == sorted(values) and values[-1] <= 1.0 and curve["x"][-1] <= entry["data"]["rows"]["test"]
    (plot,) = entry["plots"]["recall_at_k"]
    assert_plot(run / plot)
    text = (run / CARD_MD).read_text()
    assert "| K | text -> product | product -> text |" in text and f"]({plot})" in text


def twenty_classes() -> ClassReport:
    """Class i has 20 - i examples, all predicted right but 5 of c0's, taken for c19; c3's F1 is the worst, the
    8 rarest classes come next."""
    labels = [f"c{i}" for i in range(20)]
    confusion = [[0] * 20 for _ in range(20)]
    for i in range(20):
        confusion[i][i] = 20 - i  # class i has 20 - i examples, all right...
    confusion[0][19] = 5  # ...but 5 of c0 are taken for c19, the rarest class
    f1 = [1.0] * 12 + [0.5] * 8
    f1[3] = 0.2
    return ClassReport("a", labels, [sum(r) for r in confusion], f1, confusion, 0.1, [(0.5, 0.5, 1)])


def test_confusion_folds_rare_classes_into_other_and_summaries_pick_classes() -> None:
    report = twenty_classes()
    names, counts = folded_confusion(report, top=4)
    assert names == ["c0", "c1", "c2", "c3", "other"]
    assert counts[0] == [20, 0, 0, 0, 5] and counts[4][4] == sum(20 - i for i in range(4, 20))
    assert sum(map(sum, counts)) == sum(map(sum, report.confusion))  # nothing is lost by folding
    summary = class_summary(report, n=2)
    assert [r["class"] for r in summary["most_frequent"]] == ["c0", "c1"]
    assert [r["class"] for r in summary["worst"]] == ["c3", "c12"]  # lowest F1 first, then the most frequent


def test_logged_scalars_are_split_into_overall_and_groups() -> None:
    logged = {"test/loss": 1.0, "test/gender/acc": 0.5, "val/x": 2.0, "test/tags/mAP": 0.3}
    overall, groups = split_scores(logged, "test")
    assert overall == {"loss": 1.0} and groups == {"gender": {"acc": 0.5}, "tags": {"mAP": 0.3}}


def test_the_markdown_shows_frequent_and_worst_classes_with_their_plots() -> None:
    card = new_card("SomeTask", {"model": {"class_path": "some.Task"}})
    results = evaluation_results({"test/a/acc": 0.9}, "test", EvaluationReport([twenty_classes()]), {"a": ["p/a.png"]})
    card["evaluations"]["test/last"] = {"stage": "test", "checkpoint": "checkpoints/last.ckpt", "status": "done",
                                        **results}  # fmt: skip
    text = render(card)
    frequent, worst = text.index("Most frequent classes"), text.index("Worst classes by F1")
    assert frequent < text.index("| c9 | 11 | 1.0000 |") < worst
    assert "| c3 | 17 | 0.2000 |" in text[worst:] and "| c19 | 1 | 0.5000 |" in text[worst:]
    assert "| c10 |" not in text  # neither among the frequent nor among the worst
    assert "| a | 0.9000 |" in text and "![a: a](p/a.png)" in text and "class_path: some.Task" in text


def test_tagging_metrics_report_per_class_f1_and_calibration() -> None:
    metrics = TaggingMetrics({"a": ["x", "y", "z"]}, {})
    logits = {"a": torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0], [0, 5.0, 0]])}
    metrics.update(logits, {"labels": torch.tensor([[0], [1], [2], [1], [IGNORE_INDEX]]), "tags": {}})
    (report,) = metrics.class_reports()
    assert report.support == [1, 2, 1] and report.confusion == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert report.f1 == pytest.approx([2 / 3, 2 / 3, 1.0])  # x: one false positive, y: one false negative
    confidence = math.exp(5) / (math.exp(5) + 2)  # every known product is predicted with this probability
    assert report.ece == pytest.approx(confidence - 0.75, abs=1e-5)  # 3 of the 4 are right
    assert [b for b in report.bins if b[2]] == [pytest.approx((confidence, 0.75, 4))]
    logged = metrics.compute_and_reset("test")
    assert float(logged["test/a/ece"]) == pytest.approx(report.ece)
    assert metrics.class_reports() == []  # reset with the logged scores
