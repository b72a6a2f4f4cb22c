"""``docs/benchmarks.md`` stays true to the tree: every ``python -m benchmarks.<name>`` command it shows names a
program and only options that program's ``--help`` lists, every results file it names exists, and every anchor that
another file links to (``benchmarks.md#...``) is still on the page."""

from __future__ import annotations

import importlib
import re
import shlex

import pytest
from conftest import ROOT
from test_benchmarks_smoke import BENCHMARKS

DOC = ROOT / "docs" / "benchmarks.md"
# The folders whose files link into the page; a link to a missing anchor lands at the top, silently.
LINKING = ["README.md", "docs", "configs", "multimodal", "benchmarks", "tests", "encoders", "fusion"]


def shown_commands() -> list[list[str]]:
    """The words of each ``python -m benchmarks.<name>`` command in the page's bash blocks, shell variables
    (``cq="..."`` then ``$cq ...``) expanded and continuation lines joined."""
    commands, variables = [], {}
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if match := re.fullmatch(r'(\w+)="(.*)"', line):
                variables[match[1]] = match[2]
                continue
            for name, value in variables.items():
                line = line.replace(f"${name} ", f"{value} ")
            if line.startswith("python -m benchmarks."):
                commands.append(shlex.split(line))
    return commands


def test_the_page_shows_a_command_for_every_program() -> None:
    shown = {words[2].removeprefix("benchmarks.") for words in shown_commands()}
    assert set(BENCHMARKS) <= shown, sorted(set(BENCHMARKS) - shown)


@pytest.mark.parametrize("words", shown_commands(), ids=lambda words: " ".join(words[2:5]))
def test_every_shown_option_is_in_the_programs_help(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    program = importlib.import_module(words[2])
    with pytest.raises(SystemExit) as exc:
        program.main(["--help"])
    assert exc.value.code == 0
    listed = set(re.findall(r"--[\w-]+", capsys.readouterr().out))
    shown = {word for word in words[3:] if word.startswith("--")}
    assert shown <= listed, f"{' '.join(words)}: {sorted(shown - listed)} not in --help"


def test_named_results_files_exist() -> None:
    text = DOC.read_text(encoding="utf-8")
    names = set(re.findall(r"benchmarks/results/([\w*]+\.json)", text))
    # results files named alone in backquotes: the summary table's last column, the sections' notes
    names |= set(
        re.findall(
            r"`((?:tagging|caption|retrieval|search|serve|shard|cold|export|inference|train)[\w*]*\.json)`", text
        )
    )
    missing = [name for name in sorted(names) if not list((ROOT / "benchmarks" / "results").glob(name))]
    assert not missing


def test_linked_anchors_exist() -> None:
    text = DOC.read_text(encoding="utf-8")
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):  # GitHub's slug: lower case, punctuation dropped
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    linked = set(re.findall(r"\]\(#([\w-]+)\)", text))
    for folder in LINKING:
        paths = [ROOT / folder] if (ROOT / folder).is_file() else (ROOT / folder).rglob("*")
        for path in paths:
            if path.suffix in {".md", ".py", ".yaml"} and path.is_file():
                linked |= set(re.findall(r"benchmarks\.md#([\w-]+)", path.read_text(encoding="utf-8")))
    assert linked and not linked - anchors, sorted(linked - anchors)
