"""The argument parser of the batch commands (``predict``, ``export``, ``caption``, ``index``, ``search``,
``serve``, ``export-model``): argparse without prefix matching, and a close match for an unknown option.

Argparse takes any unambiguous prefix of an option for that option, so a misspelt ``--top`` would silently be
``--top_k``; here an unknown or misspelt option is an error that names the option meant. Light on purpose: the
commands answer ``--help`` and argument errors before anything heavy is imported.
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``allow_abbrev=False`` and "did you mean" for unknown options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown is not None:
            flags = [a.split("=", 1)[0] for a in unknown.group(1).split() if a.startswith("-")]
            if flags:
                message = f"unknown option '{flags[0]}'{self._close(flags[0])}"
        super().error(message)

    def _close(self, flag: str) -> str:
        """``: did you mean '--x'?`` for the long option nearest to ``flag``, or nothing."""
        known = [s for s in self._option_string_actions if s.startswith("--")]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        return f": did you mean '{close[0]}'?" if close else ""
