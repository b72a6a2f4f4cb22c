"""The ``multimodal`` command, driven like Lightning's own CLI tests: fit, predict, test, overrides and errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, SAMPLE_IMAGES, SAMPLE_MANIFEST, TINY_CONFIG

from fusion import CrossAttentionFusion, EarlyFusion, LateFusion
from multimodal.cli import main
from multimodal.lightning_cli import MultimodalCLI


@pytest.fixture(autouse=True)
def command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The arguments go to ``main`` explicitly; sys.argv holds only the program name, as in Lightning's CLI tests."""
    monkeypatch.setattr(sys, "argv", ["multimodal"])


def base_args(tmp_path: Path, *extra: str) -> list[str]:
    """The tiny config with absolute data paths and everything written under ``tmp_path``."""
    return [
        "--config", str(TINY_CONFIG),
        "--data.init_args.manifest", str(SAMPLE_MANIFEST),
        "--data.init_args.image_root", str(SAMPLE_IMAGES),
        "--data.init_args.num_workers", "0",
        "--trainer.default_root_dir", str(tmp_path),
        *extra,
    ]  # fmt: skip


def callbacks(*specs: dict) -> list[str]:
    return ["--trainer.callbacks", json.dumps(list(specs))]


def checkpoint_callback(dirpath: Path) -> dict:
    init_args = {"dirpath": str(dirpath), "save_last": True}
    return {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": init_args}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[MultimodalCLI, Path, Path]:
    """One short ``fit`` through the CLI, shared by the checkpoint tests: (cli, last.ckpt, run folder)."""
    tmp = tmp_path_factory.mktemp("fit")
    args = base_args(
        tmp,
        "--trainer.max_steps", "4",
        "--trainer.limit_val_batches", "1",
        "--trainer.enable_checkpointing", "true",
        "--data.init_args.predict_split", "test",
        *callbacks(checkpoint_callback(tmp / "ckpt")),
    )  # fmt: skip
    cli = MultimodalCLI(args=["fit", *args])
    assert cli.trainer.global_step == 4
    return cli, tmp / "ckpt" / "last.ckpt", tmp


def in_memory_predictions(cli: MultimodalCLI) -> list[dict]:
    """What the fitted model predicts without any checkpoint, decoded like the writer does."""
    out = cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    rows = []
    for batch in out:
        decoded = cli.model.decode(batch["probs"], top_k=2)
        rows += [{"id": i, **row} for i, row in zip(batch["ids"], decoded, strict=True)]
    return rows


def test_predict_from_checkpoint_reproduces_the_fitted_model(
    fitted: tuple[MultimodalCLI, Path, Path], tmp_path: Path
) -> None:
    cli, last, _ = fitted
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    state = cli.model.state_dict()
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in state.items())  # last.ckpt is the final state
    assert ckpt["vocabularies"] == cli.datamodule.vocabularies
    expected = in_memory_predictions(cli)
    test_ids = [r.id for r in cli.datamodule.splits["test"]]
    assert [r["id"] for r in expected] == test_ids

    df = pd.read_csv(SAMPLE_MANIFEST, dtype=str, keep_default_na=False)
    df[df["id"].isin(set(test_ids))].to_csv(tmp_path / "test.csv", index=False)
    outputs = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    for output in outputs:
        main(["predict", "--ckpt_path", str(last), "--data.manifest", str(tmp_path / "test.csv"),
              "--data.image_root", str(SAMPLE_IMAGES), "--out", str(output), "--top_k", "2",
              "--no_progress"])  # fmt: skip
    rows = [json.loads(line) for line in outputs[0].read_text().splitlines()]
    assert rows == expected  # ids in input order, labels and scores (6 decimals), top-2 lists: all equal
    assert outputs[1].read_text() == outputs[0].read_text()
    assert {r["gender"] for r in rows} <= set(cli.datamodule.vocabularies["gender"])


def test_predict_needs_no_label_columns(fitted: tuple[MultimodalCLI, Path, Path], tmp_path: Path) -> None:
    """A new catalogue with no attribute column at all: labels come from the checkpoint's vocabularies."""
    cli, last, _ = fitted
    df = pd.read_csv(SAMPLE_MANIFEST, dtype=str, keep_default_na=False).head(5)[["id", "image", "title"]]
    df.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "new.jsonl"
    main(["predict", "--ckpt_path", str(last), "--data.manifest", str(tmp_path / "new.csv"),
          "--data.image_root", str(SAMPLE_IMAGES), "--out", str(out), "--no_progress"])  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == df["id"].tolist()
    assert all(r["season"] in cli.datamodule.vocabularies["season"] for r in rows)


def test_test_subcommand_prints_and_logs_metrics(
    fitted: tuple[MultimodalCLI, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, last, _ = fitted
    csv_logger = {"save_dir": str(tmp_path), "name": "t"}
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": csv_logger}
    main(["test", *base_args(tmp_path, "--ckpt_path", str(last), "--trainer.logger", json.dumps(logger))])
    printed = capsys.readouterr().out
    for key in ("test/mean_acc", "test/mean_macro_f1", "test/gender/acc"):
        assert key in printed
    run = last.parent / "test" / "last"  # beside the checkpoint it evaluated (its folder), not a new version folder
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test/mean_acc" in header
    plots = {
        f"{a}-{kind}.png" for a in ("gender", "masterCategory", "season") for kind in ("confusion", "f1", "reliability")
    }
    assert {p.name for p in (run / "plots").iterdir()} >= plots
    assert not (tmp_path / "t").exists()


FUSION_OVERRIDES = {
    "early": (
        {"class_path": "fusion.early.EarlyFusion", "init_args": {"dim": 32, "layers": 1, "heads": 2}},
        EarlyFusion,
    ),
    "late": ({"class_path": "fusion.late.LateFusion", "init_args": {"dim": 32, "mode": "gated"}}, LateFusion),
    "cross_attention": (
        {"class_path": "fusion.cross_attention.CrossAttentionFusion", "init_args": {"dim": 32, "bidirectional": True}},
        CrossAttentionFusion,
    ),
}


@pytest.mark.parametrize("fusion", list(FUSION_OVERRIDES))
def test_fusion_is_swapped_by_one_override(fusion: str, tmp_path: Path) -> None:
    spec, cls = FUSION_OVERRIDES[fusion]
    args = base_args(tmp_path, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
                     "--model.init_args.fusion", json.dumps(spec))  # fmt: skip
    cli = MultimodalCLI(args=["fit", *args])
    assert type(cli.model.fusion) is cls
    assert cli.model.fusion.output_dim == 32
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("class_path", ["fusion.early.EarlyFusion", "fusion.late.LateFusion"])
def test_fusion_swap_by_class_path_alone(class_path: str, tmp_path: Path) -> None:
    """The README's form: ``--model.init_args.fusion <class path>`` (no model is trained here)."""
    cli = MultimodalCLI(args=base_args(tmp_path, "--model.init_args.fusion", class_path), run=False)
    assert f"{type(cli.model.fusion).__module__}.{type(cli.model.fusion).__name__}" == class_path


def run_main_expecting_exit(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return info.value.code, err


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (["--model.init_args.fusion", "fusion.nope.NoSuchFusion"], "fusion.nope.NoSuchFusion"),
        (["--model.init_args.vision", "encoders.nope.NoSuchEncoder"], "encoders.nope.NoSuchEncoder"),
        (["--trainer.max_stepz", "3"], "max_stepz"),
        (["--model.init_args.fusion.init_args.dimm", "8"], "dimm"),
    ],
)
def test_unknown_class_or_key_exits_with_a_clear_error(
    override: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_main_expecting_exit(["fit", *base_args(tmp_path, *override)], capsys)
    assert code == 2
    assert "error:" in err and named in err


def test_bad_key_in_a_yaml_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["data"]["init_args"]["manifst"] = "typo.csv"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    code, err = run_main_expecting_exit(["fit", *base_args(tmp_path), "--config", str(tmp_path / "bad.yaml")], capsys)
    assert code == 2 and "manifst" in err


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (["--data.init_args.attributes", "[gender, colour]"], "'colour'"),
        (["--data.init_args.text_columns", "[description]"], "'description'"),
        (["--data.init_args.manifest", "/no/such/catalogue.csv"], "/no/such/catalogue.csv"),
    ],
)
def test_data_errors_exit_2_with_one_line(
    override: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_main_expecting_exit(["fit", *base_args(tmp_path, *override)], capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0]
    assert err.rstrip().endswith(errors[0])


def test_console_command_prints_no_traceback(tmp_path: Path) -> None:
    """The real command in a fresh process: the whole stderr ends in one ``error:`` line, no traceback."""
    args = base_args(tmp_path, "--data.init_args.attributes", "[gender, colour]")
    cmd = [sys.executable, "-m", "multimodal.cli", "fit", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: manifest ") and "missing column(s) ['colour']" in last


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["test", *base_args(tmp_path, "--ckpt_path", str(tmp_path / "no.ckpt"))]
    code, err = run_main_expecting_exit(args, capsys)
    assert code == 2 and "no.ckpt" in err
    args = ["predict", "--ckpt_path", str(tmp_path / "no.ckpt"), "--out", str(tmp_path / "o.jsonl")]
    code, err = run_main_expecting_exit(args, capsys)
    assert code == 2 and "checkpoint not found" in err and "no.ckpt" in err


@pytest.mark.slow
def test_fit_under_ddp_with_two_cpu_processes(tmp_path: Path) -> None:
    """Two CPU ranks train; corrupt photos met by either rank all reach rank 0's data report (skip policy)."""
    rows = pd.read_csv(SAMPLE_MANIFEST, dtype=str, keep_default_na=False).head(64).copy()
    images = tmp_path / "images"
    images.mkdir()
    for name in rows["image"]:
        shutil.copy(SAMPLE_IMAGES / name, images / name)
    corrupt = rows["id"].iloc[:48:8].tolist()  # six training products
    for item_id in corrupt:
        (images / f"{item_id}.jpg").write_bytes(b"not a jpeg")
    rows["split"] = ["train"] * 48 + ["val"] * 16
    rows.to_csv(tmp_path / "manifest.csv", index=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "multimodal.cli", "fit",
        *base_args(tmp_path,
                   "--data.init_args.manifest", str(tmp_path / "manifest.csv"),
                   "--data.init_args.image_root", str(images),
                   "--data.init_args.on_bad_sample", "skip",
                   "--data.init_args.batch_size", "8",  # 24 training rows per rank: no batch dropped
                   "--data.init_args.report_path", str(tmp_path / "report.json"),
                   "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                   "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1",
                   "--trainer.enable_checkpointing", "true"),
        *callbacks(checkpoint_callback(tmp_path / "ckpt")),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in proc.stderr
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] >= 1
    assert ckpt["vocabularies"].keys() == {"gender", "masterCategory", "season"}
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted(item["id"] for item in report["skipped"]) == sorted(corrupt)


def test_the_command_and_its_help_import_no_torch() -> None:
    """Start-up is part of the interface: `import multimodal.cli`, `multimodal --help` and the batch commands' help
    answer before torch (or Lightning) is imported."""
    script = (
        "import sys\n"
        "from multimodal.cli import main\n"
        "assert 'torch' not in sys.modules, 'import multimodal.cli imported torch'\n"
        "for argv in (['--help'], ['predict', '--help'], ['export', '--help'], ['caption', '--help'],\n"
        "             ['index', '--help'], ['search', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code in (0, None), argv\n"
        "    heavy = [m for m in ('torch', 'lightning', 'transformers', 'pandas') if m in sys.modules]\n"
        "    assert not heavy, (argv, heavy)\n"
        "print('LIGHT')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("LIGHT"), proc.stderr[-2000:]
    assert "usage: multimodal predict" in proc.stdout and "Using a trained model" in proc.stdout
