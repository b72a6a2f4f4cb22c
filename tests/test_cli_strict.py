"""The command takes what it is given or says no in one line: no prefix matching of options, nested config keys named
with their path and a close match, and no ``--model.*`` option ignored next to a checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SAMPLE_IMAGES, SAMPLE_MANIFEST, TINY_CONFIG, TINY_CONFIGS, fit_tiny

from multimodal.cli import COMMANDS, LIGHTNING, main

TRAINER_TYPO = "trainer: unknown option 'max_epoch' for lightning.pytorch.Trainer: did you mean 'max_epochs'?"
HEDAS = (
    "model.init_args.fusion.init_args: unknown key 'hedas' for fusion.cross_attention.CrossAttentionFusion: "
    "did you mean 'heads'?"
)


@pytest.fixture(autouse=True)
def command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The arguments go to ``main`` explicitly; sys.argv holds only the program name."""
    monkeypatch.setattr(sys, "argv", ["multimodal"])


def tiny(*extra: str, config: Path = TINY_CONFIG) -> list[str]:
    return ["--config", str(config), "--data.init_args.manifest", str(SAMPLE_MANIFEST),
            "--data.init_args.image_root", str(SAMPLE_IMAGES), *extra]  # fmt: skip


def error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command, expecting exit 2 and exactly one line with ``error:`` and no traceback; that line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err[-2000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err[-2000:]
    return errors[0]


# ------------------------------------------------------------------------------------- no prefix matching (9)
# Each command with what it needs and one option abbreviated (a unique prefix of a real option): prefix matching
# would take it and go on to a later error (missing checkpoint or index); the option must be refused as unknown.
ABBREVIATED = {
    "fit": ["--trainer.max_epoch", "1", "--print_config"],
    "validate": ["--trainer.max_epoch", "1", "--print_config"],
    "test": ["--trainer.max_epoch", "1", "--print_config"],
    "predict": ["--ckpt_path", "no.ckpt", "--out", "o.jsonl", "--batch_s", "4"],
    "export": ["--ckpt_path", "no.ckpt", "--out", "vectors", "--batch_s", "4"],
    "caption": ["--ckpt_path", "no.ckpt", "--out", "c.jsonl", "--batch_s", "4"],
    "index": ["no-export", "--out", "index", "--memory_b", "1GB"],
    "search": ["no-index", "--text", "watch", "--mod", "dense"],
    "serve": ["--tagger", "no.ckpt", "--max_batch", "4"],
    "export-model": ["--ckpt_path", "no.ckpt", "--out", "onnx", "--quant", "int8"],
    "prepare": ["--data.manifest", "no.csv", "--out", "stream", "--num_work", "2"],
}


def test_every_command_is_covered() -> None:
    assert set(ABBREVIATED) == set(COMMANDS) | set(LIGHTNING)


@pytest.mark.parametrize("command", list(ABBREVIATED))
def test_no_command_takes_an_abbreviated_option(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ABBREVIATED[command]
    given = next(a for a in reversed(args) if a.startswith("--") and a != "--print_config")
    line = error_line([command, *(tiny(*args) if command in LIGHTNING else args)], capsys)
    if command in LIGHTNING:
        assert line == f"error: {TRAINER_TYPO}"
    else:
        assert f"unknown option '{given}': did you mean '--" in line
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--conf", str(TINY_CONFIG)], "unknown option '--conf': did you mean '--config'?"),
        (
            ["--config", str(TINY_CONFIG), "--print_conf"],
            "unknown option '--print_conf': did you mean '--print_config'?",
        ),
        (
            ["--config", str(TINY_CONFIG), "--data.init_args.batch", "4"],
            "data.init_args: unknown key 'batch' for multimodal.data.datamodule.ProductDataModule: "
            "did you mean 'batch_size'?",
        ),
    ],
)
def test_abbreviated_lightning_options_are_refused(
    option: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert error_line(["fit", *option], capsys) == f"error: {expected}"


# ----------------------------------------------------------------------------------- nested config keys (11)
def write_config(tmp_path: Path, edit: dict, config: Path = TINY_CONFIG) -> Path:
    """A copy of a tiny config with ``edit`` (key path -> value; None deletes) applied."""
    data = yaml.safe_load(config.read_text())
    for path, value in edit.items():
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    out = tmp_path / "config.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


@pytest.mark.parametrize(
    ("config", "edit", "expected"),
    [
        (TINY_CONFIG, {"model.init_args.fusion.init_args.hedas": 4}, HEDAS),
        (
            TINY_CONFIGS["retriever"],  # a block in an optional (Union) setting
            {"model.init_args.reranker.init_args.hedas": 2},
            HEDAS.replace(".fusion.", ".reranker."),
        ),
        (
            TINY_CONFIG,
            {"model.init_args.fusion.hedas": 4},
            "model.init_args.fusion: unknown key 'hedas' beside class_path: the settings of "
            "fusion.cross_attention.CrossAttentionFusion go under init_args",
        ),
        (TINY_CONFIG, {"trainer.max_epoch": 1, "trainer.max_epochs": None}, TRAINER_TYPO.replace("option", "key")),
        (TINY_CONFIG, {"trainr": {"max_epochs": 1}}, "unknown key 'trainr': did you mean 'trainer'?"),
        (
            TINY_CONFIG,
            {"model.init_args.fusion.init_args.heads": "four"},
            "model.init_args.fusion.init_args.heads: expected int (given: four)",
        ),
    ],
    ids=["fusion", "reranker", "beside-class-path", "trainer", "top-level", "type"],
)
def test_a_wrong_key_in_a_yaml_file_is_named_with_its_path(
    config: Path, edit: dict, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, edit, config)
    assert error_line(["fit", *tiny("--print_config", config=path)], capsys) == f"error: {expected}"


def test_the_same_mistake_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["fit", *tiny("--model.init_args.fusion.init_args.hedas", "4", "--print_config")]
    assert error_line(argv, capsys) == f"error: {HEDAS}"


def test_the_console_command_prints_one_line(tmp_path: Path) -> None:
    """The real command in a fresh process: exit 2, the whole stderr is the one line."""
    path = write_config(tmp_path, {"model.init_args.fusion.init_args.hedas": 4})
    command = Path(sys.executable).with_name("multimodal")
    cmd = [str(command)] if command.exists() else [sys.executable, "-m", "multimodal.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, "fit", *tiny(config=path), "--trainer.fast_dev_run", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {HEDAS}"]


# ------------------------------------------------------------------------- --model.* with a checkpoint (3)
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step tiny tagger; trained with one setting its config file does not mention (head_dropout)."""
    root = tmp_path_factory.mktemp("strict")
    return fit_tiny("tagger", root, SAMPLE_MANIFEST, SAMPLE_IMAGES, 2, "--model.init_args.head_dropout", "0.2")


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_a_model_option_that_changes_the_checkpoint_is_refused(
    subcommand: str, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [subcommand, *tiny("--ckpt_path", str(checkpoint), "--model.init_args.fusion=fusion.early.EarlyFusion")]
    assert error_line(argv, capsys) == (
        f"error: --ckpt_path {checkpoint} was trained with model.init_args.fusion.class_path="
        "fusion.cross_attention.CrossAttentionFusion; the command asks for fusion.early.EarlyFusion: "
        f"{subcommand} evaluates the checkpoint as trained, drop the option (or train with it)"
    )


def test_every_difference_is_named(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One from the config file, two from options; the head_dropout of training is not mentioned: not one."""
    path = write_config(tmp_path, {"model.init_args.ngram_buckets": 64})
    argv = ["test", *tiny("--ckpt_path", str(checkpoint), "--model.init_args.fusion.init_args.heads", "4",
                          "--model.init_args.optimizer.init_args.lr", "0.1", config=path)]  # fmt: skip
    line = error_line(argv, capsys)
    assert (
        "was trained with model.init_args.fusion.init_args.heads=2, model.init_args.ngram_buckets=1024, "
        "model.init_args.optimizer.init_args.lr=0.003; the command asks for model.init_args.fusion.init_args.heads=4, "
        "model.init_args.ngram_buckets=64, model.init_args.optimizer.init_args.lr=0.1: test evaluates"
    ) in line


def test_the_training_config_tests_the_checkpoint(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented flow: the config it was fitted with (a block named by a shorter class path is the same
    block), and the model tested is the one trained (head_dropout 0.2, which the command does not give)."""
    from multimodal.lightning_cli import MultimodalCLI

    args = tiny("--ckpt_path", str(checkpoint), "--model.init_args.fusion", "fusion.CrossAttentionFusion",
                "--trainer.limit_test_batches", "1", "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    cli = MultimodalCLI(args=["test", *args])
    assert "test/mean_acc" in capsys.readouterr().out
    assert cli.model.head_dropout == 0.2
