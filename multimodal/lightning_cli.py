"""LightningCLI for training and evaluation: ``multimodal fit | validate | test`` (``predict`` is the batch-job
command, :mod:`multimodal.predict_cli`). Imported only when one of these runs."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from multimodal.errors import UserError

DESCRIPTION = """Train and evaluate: fit, validate, test (configs/<task>/<fusion>.yaml).
Run `multimodal <subcommand> --help` for the options of each."""
TRAINER = "lightning.pytorch.Trainer"  # the class behind the `trainer.*` options, as users import it


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


def class_path_of(name: Any) -> Any:
    """The defining module path of the class ``name`` imports (``fusion.CrossAttentionFusion`` ->
    ``fusion.cross_attention.CrossAttentionFusion``); ``name`` itself when it does not import."""
    import importlib

    try:
        module, attr = str(name).rsplit(".", 1)
        cls = getattr(importlib.import_module(module), attr)
        return f"{cls.__module__}.{cls.__qualname__}"
    except (ValueError, ImportError, AttributeError):
        return name


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def parse_error_line(err: BaseException, options: Sequence[str] = ()) -> str:
    """One line for a LightningCLI parse error: the key path, the unknown key or option, the class it was given to
    and, when one is close, the name meant ("did you mean ..."), instead of the parser's nested explanation.

    Args:
        err: the parser's error; its chain of causes leads from the outermost key to the innermost mistake.
        options: the long options of the parser that failed (``--trainer.max_epochs``, ...): the names known for
            an unknown option or top-level key.
    """
    path, where, reason, innermost = _error_path(err)
    unknown = re.fullmatch(
        r"Option '(\w+)[\w.]*' is not accepted|Group '([\w.]+)' does not accept option '(\w+)'", reason
    )
    if unknown is not None:  # (a section under an unknown key is named by that key)
        if unknown.group(2):
            path, where = [*path, unknown.group(2)], TRAINER if unknown.group(2) == "trainer" else None
        return _unknown_line(".".join(path), "key", unknown.group(1) or unknown.group(3), where, options)
    if reason.startswith("unrecognized arguments: "):
        flags = [a.split("=", 1)[0] for a in reason.split()[2:] if a.startswith("--")]
        if not flags:
            return reason
        group, _, name = flags[0][2:].rpartition(".")
        return _unknown_line(group, "option", name, TRAINER if group == "trainer" else None, options)
    while path and path[-1] == "init_args":  # a block that failed as a whole: name the block
        path.pop()
    key = ".".join(path)
    if reason.startswith("Dict must include a class_path"):
        return _block_line(key, reason, where)
    if isinstance(innermost, ImportError | AttributeError) and where is not None:
        return f"{key}: cannot import class '{where}' ({reason})"
    expected = re.fullmatch(r"Expected an? <class '(\w+)'>\. Got value: (.*)", reason)
    if expected is not None:
        return f"{key}: expected {expected.group(1)} (given: {expected.group(2)})"
    return f"{key}: {reason}"[:300] if key else reason[:300]


def _error_path(err: BaseException) -> tuple[list[str], str | None, str, BaseException]:
    """Walk the chain of a jsonargparse error: (key path, class path of the innermost block, innermost message, the
    innermost error). Each level's message starts with what it adds: a key, a block's class, a factory's class."""
    path: list[str] = []
    where: str | None = None
    messages: list[str] = []
    seen: set[int] = set()
    current, innermost = err, err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current.args[0] if isinstance(current, KeyError) else current).split())
        if not messages or text != messages[-1]:  # the same error is raised again under other types
            messages.append(text)
        innermost, current = current, current.__cause__ or current.__context__
    for text in messages:
        key = re.match(r'Parser key "([\w.]+)": ', text)
        block = re.match(r"Problem with given class_path '([\w.]+)': ", text)
        factory = re.match(r"Type .*? expects a function or a callable class: ", text)
        if key is not None:
            path.append(key.group(1))
        elif block is not None or factory is not None:
            path.append("init_args")
            named = block or re.search(r"Got value: (?:Namespace\(class_path=')?([\w.]+)", text)
            where = named.group(1) if named else None
    return path, where, messages[-1] if messages else str(err), innermost


def _unknown_line(path: str, kind: str, name: str, where: str | None, options: Sequence[str]) -> str:
    """``<path>: unknown <kind> '<name>' for <class>: did you mean '<close>'?`` (or the names it takes)."""
    import difflib

    where = class_path_of(where) if where not in (None, TRAINER) else where
    known = _parameters(where) if where not in (None, TRAINER) else []
    if not known:  # the parser's own names: those of an option group (trainer.*) or the top-level keys
        prefix = f"--{path}." if path else "--"
        known = sorted({o[len(prefix) :].split(".")[0] for o in options if o.startswith(prefix)})
    dashes = "--" if kind == "option" and not path else ""
    line = (f"{path}: " if path else "") + f"unknown {kind} '{dashes}{name}'" + (f" for {where}" if where else "")
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"{line}: did you mean '{dashes}{close[0]}'?"
    return f"{line}; it takes {', '.join(known)}" if known and len(known) <= 20 else line


def _parameters(class_path: str) -> list[str]:
    """The named parameters of the class at ``class_path`` (what its ``init_args`` may set)."""
    import importlib
    import inspect

    try:
        module, name = class_path.rsplit(".", 1)
        signature = inspect.signature(getattr(importlib.import_module(module), name))
    except (ValueError, ImportError, AttributeError, TypeError):
        return []
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in signature.parameters.values() if p.name != "self" and p.kind not in kinds]


def _block_line(key: str, reason: str, where: str | None) -> str:
    """A block (``class_path`` + ``init_args``) with other keys beside them, or without a class_path."""
    import ast

    given = re.search(r"but got (\{.*\})", reason)
    try:
        block = ast.literal_eval(given.group(1)) if given else {}
    except (ValueError, SyntaxError):
        block = {}
    extra = [k for k in block if k not in ("class_path", "init_args", "dict_kwargs")]
    if "class_path" not in block:
        return f"{key}: a block needs a class_path (and its settings under init_args)"
    if extra:
        return (
            f"{key}: unknown key '{extra[0]}' beside class_path: the settings of "
            f"{class_path_of(where or block['class_path'])} go under init_args"
        )
    return f"{key}: {reason}"[:300]
