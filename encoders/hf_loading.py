"""Loading Hugging Face weights without noise a user cannot act on.

transformers prints a weight-loading progress bar and, for an encoder checkpoint loaded as a decoder, a
"checkpoint seem corrupted" line and a LOAD REPORT of the LM head's keys the checkpoint never had. Those keys are
expected (the head is tied to the embeddings or trained here): they go to this module's logger at debug level; a
missing weight anywhere else is one warning line naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from transformers.utils import logging as hf_logging

log = logging.getLogger(__name__)


@contextmanager
def quietly() -> Iterator[None]:
    """transformers' own warnings and progress bars off while weights load; the settings are restored after."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def report_missing(source: str, missing: Iterable[str], expected_prefixes: Iterable[str]) -> None:
    """Weights ``source`` lacked: those under ``expected_prefixes`` (a head this model adds) at debug level, any
    other one as a single warning line, since it starts untrained where a pretrained weight was meant to be."""
    missing = sorted(missing)
    prefixes = tuple(expected_prefixes)
    unexpected = [k for k in missing if not k.startswith(prefixes)] if prefixes else missing
    if len(unexpected) < len(missing):
        log.debug(
            "%s: %d weight(s) of the new head start untrained: %s",
            source,
            len(missing) - len(unexpected),
            ", ".join(k for k in missing if k not in unexpected),
        )
    if unexpected:
        log.warning(
            "%s lacks %d pretrained weight(s) that start untrained, e.g. %s",
            source,
            len(unexpected),
            ", ".join(unexpected[:3]),
        )


def load_pretrained(
    auto_class: Any, model_name_or_path: str, expected_missing: Iterable[str] = (), **kwargs: Any
) -> Any:
    """``auto_class.from_pretrained`` without transformers' bars and reports; missing weights as
    :func:`report_missing` says (``expected_missing``: key prefixes of a head the model adds)."""
    with quietly():
        model, info = auto_class.from_pretrained(model_name_or_path, output_loading_info=True, **kwargs)
    report_missing(str(model_name_or_path), info["missing_keys"], expected_missing)
    return model
