"""The ``multimodal`` command. Light on purpose: nothing heavy (torch, Lightning) is imported until a command runs,
so ``multimodal --help``, ``multimodal <command> --help`` of the batch commands and argument errors answer at once.

Lightning subcommands (``fit``, ``validate``, ``test``) go to :mod:`multimodal.lightning_cli`; the others are
modules with a ``main(argv)``, imported only when used.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from multimodal.errors import UserError
from multimodal.quiet import quiet_libraries

LIGHTNING = ("fit", "validate", "test")
FULL_ONLY = (*LIGHTNING, "export-model", "prepare")  # commands the runtime install (no torch) does not have
# command -> (module, function); each takes the arguments after the command.
COMMANDS = {
    "predict": ("multimodal.predict_cli", "main"),
    "export": ("multimodal.predict_cli", "export_main"),
    "caption": ("multimodal.predict_cli", "caption_main"),
    "index": ("multimodal.search.index_cli", "main"),
    "search": ("multimodal.search.search_cli", "main"),
    "serve": ("multimodal.serve.cli", "main"),
    "export-model": ("multimodal.onnx.export", "main"),
    "prepare": ("multimodal.prepare_cli", "main"),
}

USAGE = """usage: multimodal <command> [options]

Multimodal product understanding: tagging, search and captioning.

Training (LightningCLI, configs/<task>/<fusion>.yaml):
  fit         train a task:                 multimodal fit --config configs/tagging/cross_attention.yaml
  validate    validation metrics of a checkpoint
  test        test metrics of a checkpoint (confusion matrices for tagging)
  prepare     a manifest and its photos as litdata chunks, to train from with `fit --data.stream`

Using a trained model (the checkpoint alone: no config, no training data):
  predict     tags, product vectors or captions for a manifest or a folder of photos
  export      product vectors of a retriever to resumable shards (for `index`)
  caption     captions of product photos, in batches
  index       build a FAISS index over an export
  search      query an index by text, by photo or "more like this"
  serve       tagging, captioning and search over HTTP (dynamic batching), with a search page
  export-model  a checkpoint's inference graphs as ONNX (fp32, optional int8), to run with --runtime onnx

The runtime install (`pip install multimodal-products`, no torch) runs predict, export, caption, index, search and
serve on ONNX exports; training, checkpoints and export-model need the full install (`[full]`).

Run `multimodal <command> --help` for the options of each."""


def registered_usage() -> str:
    """The registered tasks (:mod:`multimodal.task`) for ``--help``: empty without any; a broken registration is
    named there (its commands give the same one-line error)."""
    from multimodal.task import ENTRY_POINT_GROUP, TASKS_VARIABLE, registered_tasks

    try:
        found = registered_tasks()
    except UserError as err:
        return f"\n\nRegistered tasks: {err}"
    lines = [
        f"  {t.name:<11} {t.class_name}" + (f" (serve --{t.serving.setting}: /{t.serving.route})" if t.serving else "")
        for t in found
    ]
    head = f"\n\nRegistered tasks ({ENTRY_POINT_GROUP} entry points, {TASKS_VARIABLE}), for predict, serve, load:\n"
    return head + "\n".join(lines) if lines else ""


def user_message(err: BaseException) -> str:
    """The one-line message of a user error, also when a DataLoader worker re-raised it with a traceback."""
    text = str(err)
    marker = f"{type(err).__name__}: "
    if "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[-1]
    return text.strip().splitlines()[-1] if "\n" in text.strip() else text.strip()


def find_user_error(err: BaseException) -> BaseException | None:
    """The user error behind ``err``: itself, or one it was raised from (jsonargparse wraps errors raised
    while it instantiates the model or data module in a ``ValueError``)."""
    # A tower's bad setting (encoders.errors.ConfigError): that module is loaded if one was raised, and importing
    # it here would import torch with the encoders package.
    tower_error = getattr(sys.modules.get("encoders.errors"), "ConfigError", UserError)
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError | tower_error | FileNotFoundError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _close_process_group() -> None:
    """End a DDP run's process group before the interpreter exits: left to exit, its communication threads were
    sometimes destroyed while joinable (``terminate called without an active exception``, exit status -6)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``multimodal`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    if not args or args[0] in ("-h", "--help"):
        print(USAGE + registered_usage())
        return
    if args[0] not in COMMANDS and args[0] not in LIGHTNING:
        print(USAGE, file=sys.stderr)
        print(f"\nerror: unknown command '{args[0]}'", file=sys.stderr)
        raise SystemExit(2)
    try:
        if args[0] in FULL_ONLY:
            from multimodal.lite import require_full

            require_full(args[0])
        if args[0] in COMMANDS:
            if argv is None:
                sys.argv = sys.argv[:1]  # these commands hand their own arguments to any Trainer they build
            module, function = COMMANDS[args[0]]
            getattr(importlib.import_module(module), function)(args[1:])
        else:
            from multimodal.lightning_cli import MultimodalCLI

            # With argv None, LightningCLI reads sys.argv, which must stay whole: Lightning's DDP launcher starts
            # the other ranks with the same command line.
            MultimodalCLI(args=argv)
            _close_process_group()
    except argparse.ArgumentError as err:  # LightningCLI's parser (exit_on_error=False) outside parse_arguments
        from multimodal.lightning_cli import parse_error_line

        print(f"error: {parse_error_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_message(user_error)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
