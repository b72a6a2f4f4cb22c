"""Library messages a user of this command cannot act on, kept out of its output.

Lightning advertises its cloud add-ons on every Trainer ("Tip: For seamless cloud ..."), warns that frozen towers
are in eval mode (this framework freezes them on purpose: batch-norm statistics stay as pretrained), and its pytree
helper warns about a torch name it still uses. Everything else a library says still reaches the user.
Imports neither torch nor Lightning: it only installs filters, before they are imported.
"""

from __future__ import annotations

import logging
import warnings

NOISE_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's pytree helper on a newer torch
    r"Found \d+ module\(s\) in eval mode at the start of training",  # frozen towers, on purpose
)
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def quiet_libraries() -> None:
    """Install the filters (once per process; installing again adds nothing)."""
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdverts) for f in logger.filters):
            logger.addFilter(_NoAdverts())
