"""LightningCLI for training and evaluation: ``multimodal fit | validate | test`` (``predict`` is the batch-job
command, :mod:`multimodal.predict_cli`). Imported only when one of these runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from multimodal.errors import UserError
from multimodal.parse_errors import class_path_of, parse_error_line

DESCRIPTION = """Train and evaluate: fit, validate, test (configs/<task>/<fusion>.yaml).
Run `multimodal <subcommand> --help` for the options of each."""


class MultimodalCLI(LightningCLI):
    """LightningCLI for every task: the model and data module are chosen by ``class_path`` in the config.

    With ``--ckpt_path`` the data module encodes labels with the vocabularies saved in the checkpoint, so
    predicting on a new catalogue uses the label set the model was trained with.
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=list(args) if args is not None else None,
            run=run,
            # Parse errors are raised, not printed after the usage text: they become one line (parse_error_line).
            # No prefix matching: `--trainer.max_epoch` must be an error, not max_epochs. jsonargparse gives both
            # settings to the subcommand parsers.
            parser_kwargs={"description": DESCRIPTION, "exit_on_error": False, "allow_abbrev": False},
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test; predicting is :mod:`multimodal.predict_cli`'s job (from the checkpoint alone)."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse as LightningCLI does; a parse error becomes a one-line :class:`UserError` (parse_error_line),
        with the options of the subcommand's parser for a close match."""
        self._args = args  # kept to tell what the command itself asks for from what the parser fills in
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            argv = list(sys.argv[1:] if args is None else args)
            subcommand = argv[0] if argv else None
            failing = getattr(self, "_subcommand_parsers", {}).get(subcommand, parser)
            options = [s for s in failing._option_string_actions if s.startswith("--")]
            raise UserError(parse_error_line(err, options)) from err

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path with torch.load before anything else: a file that is not a checkpoint gets
        # the loader's one-line error here instead of torch's multi-line unpickling trace.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        self._checkpoint = None
        if ckpt_path:
            from multimodal.loading import read_checkpoint

            self._checkpoint = read_checkpoint(ckpt_path)  # kept for the checks of instantiate_classes
            if subcommand in ("validate", "test"):
                check_same_model(ckpt_path, self._checkpoint, self._asked_model(subcommand), subcommand)
        super()._parse_ckpt_path()

    def _asked_model(self, subcommand: str) -> dict[str, Any]:
        """The model section as the command gives it (config files and options) without the defaults the parser
        fills in, as plain YAML values."""
        import yaml

        given = self.parser.parse_args(self._args, defaults=False)  # the same command line, parsed once more
        text = self._parser(subcommand).dump(given[subcommand], skip_validation=True)
        return (yaml.safe_load(text) or {}).get("model") or {}

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        from multimodal.progress_bar import log_progress_callbacks  # log lines when stderr is not a terminal

        configured = config.get("callbacks") or []
        given = [*(configured if isinstance(configured, list) else [configured]), *callbacks]
        extra = log_progress_callbacks(config.get("enable_progress_bar"), given)
        return super()._instantiate_trainer(config, [*callbacks, *extra])

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        subcommand = self.config.get("subcommand")
        config_text = None
        if subcommand == "fit":
            from multimodal.loading import store_config_callback

            config = self.config.get(str(subcommand), self.config)
            config_text = self._parser(subcommand).dump(config, skip_none=False)
            self.trainer.callbacks.append(store_config_callback(config_text))
            from multimodal.resume import RandomState

            self.trainer.callbacks.append(RandomState())  # exact resume: random states travel with checkpoints
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and subcommand == "fit":
            check_resumable(ckpt_path, self._checkpoint, self.model)
        from multimodal.model_card.callback import attach_model_card

        # The model card beside the checkpoints; validate / test write into the checkpoint's run folder.
        attach_model_card(self.trainer, subcommand, ckpt_path, self._checkpoint, config_text)
        self._checkpoint = None  # Lightning reads the file again when it restores: hold no second copy
        if ckpt_path and subcommand in ("validate", "test"):
            from multimodal.loading import load

            # The model as trained, built by the one loader (heads and vocabularies from the checkpoint); the
            # data module takes the vocabularies from it in setup. check_same_model refused a command that asks
            # for another model.
            self.model = load(ckpt_path, task=type(self.model)).model


def check_resumable(ckpt_path: str, checkpoint: dict[str, Any], model: Any) -> None:
    """Before ``fit --ckpt_path`` hands the file to Lightning: a one-line error for a checkpoint of another task, or
    one whose weights have other shapes than the configured model's."""
    from multimodal.loading import stored_config

    stored = str((stored_config(checkpoint, ckpt_path).get("model") or {}).get("class_path", "")).rsplit(".", 1)[-1]
    if stored and stored != type(model).__name__:
        raise UserError(f"{ckpt_path} holds a {stored}; the config builds a {type(model).__name__}")
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in checkpoint["state_dict"].items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise UserError(
            f"{ckpt_path} was trained with another architecture than the config's (fusion, width or tower): "
            f"{len(wrong)} weight(s) differ in shape, e.g. {wrong[0]}"
        )


def check_same_model(ckpt_path: str, checkpoint: dict[str, Any], asked: dict[str, Any], subcommand: str) -> None:
    """``validate`` / ``test --ckpt_path`` evaluate the model as stored in the checkpoint: a one-line error when
    the command's config or ``--model.*`` options ask for another one, instead of ignoring them. ``asked`` holds
    no parser defaults, so that a setting the command does not mention is never a difference."""
    from multimodal.loading import stored_config

    stored = stored_config(checkpoint, ckpt_path).get("model") or {}
    if class_path_of(asked.get("class_path")) != class_path_of(stored.get("class_path")):
        return  # another task altogether: the loader's one-line error names both
    differences = config_differences(asked, stored, "model")
    if not differences:
        return
    trained = ", ".join(f"{p}={_show(t)}" for p, t, _ in differences)
    wanted = ", ".join((f"{p}=" if len(differences) > 1 else "") + _show(w) for p, _, w in differences)
    raise UserError(
        f"--ckpt_path {ckpt_path} was trained with {trained}; the command asks for {wanted}: {subcommand} "
        "evaluates the checkpoint as trained, drop the option (or train with it)"
    )


def config_differences(asked: Any, stored: Any, path: str) -> list[tuple[str, Any, Any]]:
    """``(key path, stored value, asked value)`` for each value ``asked`` gives that ``stored`` does not hold.
    Class paths are compared as the classes they import (a config may name a class by a shorter path); a block
    of another class is one difference, its settings are not compared."""
    if isinstance(asked, dict) and "class_path" in asked:
        stored = stored if isinstance(stored, dict) else {}
        wanted, trained = class_path_of(asked["class_path"]), class_path_of(stored.get("class_path"))
        if wanted != trained:
            return [(f"{path}.class_path", trained, wanted)]
        found: list[tuple[str, Any, Any]] = []
        stored_args = stored.get("init_args") or {}
        for key, value in (asked.get("init_args") or {}).items():
            found += config_differences(value, stored_args.get(key), f"{path}.init_args.{key}")
        return found
    return [] if asked == stored else [(path, stored, asked)]


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)
