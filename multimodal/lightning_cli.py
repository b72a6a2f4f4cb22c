"""LightningCLI for training and evaluation: ``multimodal fit | validate | test`` (``predict`` is the batch-job
command, :mod:`multimodal.predict_cli`). Imported only when one of these runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI

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
            # Parse errors are raised, not printed after the usage text: cli.main answers them in one line.
            parser_kwargs={"description": DESCRIPTION, "exit_on_error": False},
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test; predicting is :mod:`multimodal.predict_cli`'s job (from the checkpoint alone)."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path with torch.load before anything else: a file that is not a checkpoint gets
        # the loader's one-line error here instead of torch's multi-line unpickling trace.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        self._checkpoint = None
        if ckpt_path:
            from multimodal.loading import read_checkpoint

            self._checkpoint = read_checkpoint(ckpt_path)  # kept for the checks of instantiate_classes
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        subcommand = self.config.get("subcommand")
        if subcommand == "fit":
            from multimodal.loading import store_config_callback

            config = self.config.get(str(subcommand), self.config)
            self.trainer.callbacks.append(store_config_callback(self._parser(subcommand).dump(config, skip_none=False)))
            from multimodal.resume import RandomState

            self.trainer.callbacks.append(RandomState())  # exact resume: random states travel with checkpoints
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and subcommand == "fit":
            check_resumable(ckpt_path, self._checkpoint, self.model)
        self._checkpoint = None  # Lightning reads the file again when it restores: hold no second copy
        if ckpt_path and subcommand in ("validate", "test"):
            from multimodal.loading import load

            # The model as trained, built by the one loader (heads and vocabularies from the checkpoint); the
            # data module takes the vocabularies from it in setup.
            self.model = load(ckpt_path, task=type(self.model)).model


def check_resumable(ckpt_path: str, checkpoint: dict[str, Any], model: Any) -> None:
    """Before ``fit --ckpt_path`` hands the file to Lightning: a one-line error for a checkpoint of another task, or
    one whose weights have other shapes than the configured model's."""
    from multimodal.errors import UserError
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


def parse_error_line(message: str) -> str:
    """One line for a LightningCLI parse error: the unknown option, the class it was given to and, when one is
    close, the option meant ("did you mean ..."), instead of the parser's nested explanation."""
    import difflib
    import importlib
    import inspect
    import re

    text = " ".join(message.split())
    classes = re.findall(r"class_path[ =]'([\w.]+)'", text)
    option = re.search(r"Option '(\w+)' is not accepted", text)
    unknown = re.search(r"unrecognized arguments: (?:\w+ )?--([\w.]+)", text)
    if option is None and unknown is None:
        keys = ".".join(re.findall(r'Parser key "([\w.]+)"', text))
        reason = re.search(r"expects [^:]+: (.*?)\. Got value: (\S+)", text)
        if keys and reason:
            return f"{keys}: {reason.group(1)} (given: {reason.group(2)})"
        first = re.findall(r'Parser key "[\w.]+": - (.*?)(?= - |$)', text)
        return f"{keys}: {first[-1]}"[:300] if keys and first else text[:300]
    if option is not None:
        name, where = option.group(1), classes[-1] if classes else None
    else:
        key = unknown.group(1)  # type: ignore[union-attr]
        name = key.split(".")[0] if classes else key.split(".")[-1]
        where = classes[-1] if classes else "lightning.pytorch.Trainer" if key.startswith("trainer.") else None
    known: list[str] = []
    if where is not None:
        try:
            module, cls = where.rsplit(".", 1)
            signature = inspect.signature(getattr(importlib.import_module(module), cls))
            known = [p for p in signature.parameters if p != "self"]
        except (ImportError, AttributeError, ValueError, TypeError):
            known = []
    line = f"unknown option '{name}'" + (f" for {where}" if where else "")
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"{line}: did you mean '{close[0]}'?"
    return f"{line}; it takes {', '.join(known)}" if known else line
