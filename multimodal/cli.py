"""The ``multimodal`` command: LightningCLI (fit, validate, test, predict) plus export, index, search, caption."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

import lightning as L
from lightning.pytorch.cli import LightningCLI

from multimodal.errors import UserError

# Extra subcommands, each a module with ``main(argv: list[str]) -> None``; imported only when used.
COMMANDS = {
    "export": "multimodal.commands.export",
    "index": "multimodal.commands.index",
    "search": "multimodal.commands.search",
    "caption": "multimodal.commands.caption",
}


DESCRIPTION = """Multimodal product understanding.

Lightning subcommands (configs/<task>/<fusion>.yaml): fit, validate, test, predict.
Search: export (one vector per product), index (FAISS), search (by text or photo).
Captioning: caption (titles from photos, in batches).
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
            parser_kwargs={"description": DESCRIPTION},
        )

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        subcommand = self.config.get("subcommand")
        if subcommand == "fit":
            from multimodal.restore import StoreConfig

            config = self.config.get(str(subcommand), self.config)
            self.trainer.callbacks.append(StoreConfig(self._parser(subcommand).dump(config, skip_none=False)))
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        set_vocab = getattr(self.datamodule, "set_vocabularies", None)
        if ckpt_path and set_vocab is not None and os.path.isfile(ckpt_path):
            from multimodal.datamodule import vocabularies_from_checkpoint

            saved = vocabularies_from_checkpoint(ckpt_path)
            if saved is not None:
                set_vocab(*saved)


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
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError | FileNotFoundError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``multimodal`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args and args[0] in COMMANDS:
            if argv is None:
                sys.argv = sys.argv[:1]  # these commands hand their own arguments to any LightningCLI they build
            importlib.import_module(COMMANDS[args[0]]).main(args[1:])
        else:
            # With argv None, LightningCLI reads sys.argv, which must stay whole: Lightning's DDP launcher starts
            # the other ranks with the same command line.
            MultimodalCLI(args=argv)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_message(user_error)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
