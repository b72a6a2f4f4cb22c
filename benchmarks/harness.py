"""The frame every benchmark program shares: options declared once, ``--smoke``, the run's record, the result JSON.

A program declares its options as a table of :class:`Option` (flag -> default, help), its smoke overrides as a dict,
and reads its arguments with :func:`parse`; it fills a :class:`Report` (machine, arguments, results) that is
written as soon as a part of the run is done, so an interrupted run keeps what it measured.

A smoke run checks that a program still runs from the tree and writes its comparison; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import begin, machine, say, write_json

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "fashion-products"
RESULTS = ROOT / "benchmarks" / "results"
TINY = {task: str(ROOT / "configs" / task / "tiny.yaml") for task in ("tagging", "retrieval", "captioning")}


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option. The type follows the default (a list default takes one or more values, False is a
    switch) unless ``type`` is given, as it must be for a default of None or an empty list of numbers."""

    default: Any = None
    help: str | None = None
    type: Any = None
    choices: Sequence[Any] | None = None
    nargs: str | None = None
    metavar: str | None = None

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``ArgumentParser.add_argument`` for this option."""
        if self.default is False:
            return {"action": "store_true", "help": self.help}
        out: dict[str, Any] = {"default": self.default, "help": self.help}
        many = isinstance(self.default, list)
        sample = (self.default[0] if self.default else None) if many else self.default
        kind = self.type or (type(sample) if sample is not None else None)
        if kind is not None and kind is not str:
            out["type"] = kind
        if many or self.nargs:
            out["nargs"] = self.nargs or "+"
        out.update({k: v for k, v in (("choices", self.choices), ("metavar", self.metavar)) if v is not None})
        return out


def parser(
    program: str, doc: str, options: Mapping[str, Option], show_defaults: bool = True
) -> argparse.ArgumentParser:
    """A parser for ``python -m benchmarks.<program>`` with ``options`` (flag -> :class:`Option`), in order.

    Args:
        program: the module name after ``benchmarks.``.
        doc: the program's docstring; its first paragraph is the description.
        options: the flags and their settings.
        show_defaults: print each option's default in ``--help``.
    """
    style = argparse.ArgumentDefaultsHelpFormatter if show_defaults else argparse.HelpFormatter
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{program}", description=doc.split("\n\n")[0],
                                formatter_class=style)  # fmt: skip
    for flag, option in options.items():
        p.add_argument(flag, **option.arguments())
    return p


@contextlib.contextmanager
def work_folder(given: str | None, prefix: str) -> Iterator[Path]:
    """The run's working folder: ``given`` (kept afterwards), or a temporary one removed when the run ends."""
    work = Path(given or tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if not given:
            shutil.rmtree(work, ignore_errors=True)


def smoke_out(program: str) -> Path:
    """Where a smoke run writes when no ``--out`` is given: a temporary folder, never the published results."""
    return Path(tempfile.gettempdir()) / "multimodal-benchmark-smoke" / f"{program.rsplit('.', 1)[-1]}.json"


def parse(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, smoke: dict[str, Any], program: str
) -> argparse.Namespace:
    """Parse ``argv`` with a ``--smoke`` flag added: it makes ``smoke`` the defaults (options given on the command
    line still win) and sends ``--out`` to :func:`smoke_out`; a smoke run's ``--out`` inside
    ``benchmarks/results/`` is refused. Marks the start of the run (:func:`benchmarks.common.begin`).

    Args:
        parser: the program's parser, with an ``--out`` option.
        argv: the arguments (None: ``sys.argv[1:]``).
        smoke: option destinations and their smoke values (tiny sizes, the committed sample).
        program: the module, ``benchmarks.<name>``.
    """
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a check that the program runs, in seconds: tiny sizes and models, the committed sample as data, "
        f"results to {smoke_out(program)} unless --out is given (never into benchmarks/results/)",
    )
    known, _ = parser.parse_known_args(argv)
    if known.smoke:
        parser.set_defaults(**smoke, out=str(smoke_out(program)))
    args = parser.parse_args(argv)
    if args.smoke and Path(args.out).resolve().is_relative_to(RESULTS.resolve()):
        parser.error(f"--smoke results are not published: give an --out outside {RESULTS.relative_to(ROOT)}/")
    begin(program, argv)
    return args


class Report(dict[str, Any]):
    """The result of one run as a dict: the machine and arguments first, then what the run adds; :meth:`save` after
    each part so partial results survive an interrupted run."""

    def __init__(
        self, out: str | Path, args: argparse.Namespace | dict[str, Any], key: str = "args", **head: Any
    ) -> None:
        super().__init__(**head, machine=machine(), **{key: args if isinstance(args, dict) else vars(args)})
        self.out = Path(out)

    def save(self) -> Report:
        """Write the result (with the load averages, :func:`benchmarks.common.write_json`); returns it."""
        write_json(self.out, self)
        return self

    def finish(self, table: str) -> Report:
        """Save, print ``table`` and the ratios, say where the results went; returns the result."""
        self.save()
        print(table)
        print_ratios(self.get("ratios", {}))
        say(f"wrote {self.out}")
        return self


def print_ratios(ratios: Mapping[str, float | None]) -> None:
    """One line per ratio of the run (``-`` where the denominator answered nothing)."""
    for name, value in ratios.items():
        print(f"  {name}: {'-' if value is None else f'{value:.3f}'}")
