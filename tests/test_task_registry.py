"""Tasks registered from outside the package (:mod:`multimodal.task`): by ``MULTIMODAL_TASKS`` or by an entry point
in the group ``multimodal.tasks``; listed after the built-in ones, trusted by the loader, offered by ``serve`` and
``--help``; a bad registration is a one-line error. (``tests/test_toy_task.py`` trains and runs a registered task.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from multimodal.errors import UserError
from multimodal.loading import check_trusted
from multimodal.task import registered_packages, task_of, tasks

ROOT = Path(__file__).resolve().parents[1]
BUILT_IN = ["tagging", "captioning", "search"]


def write_task(root: Path, package: str, declaration: str | None = None, **fields: str) -> str:
    """A package ``<root>/<package>`` whose ``task.py`` declares ``TASK`` (or ``declaration`` as given);
    returns the module path to register."""
    folder = root / package
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    values = {"name": package, "model": f"{package}.model.{package.title().replace('_', '')}Model",
              "api": f"{package}.api.Api", "job": f"{package}.job.run", **fields}  # fmt: skip
    declared = ", ".join(f"{k}={v!r}" if k != "serving" else f"serving={v}" for k, v in values.items())
    text = declaration if declaration is not None else f"TASK = Task({declared})\n"
    (folder / "task.py").write_text(f"from multimodal.task import Serving, Task\n\n{text}")
    return f"{package}.task"


@pytest.fixture
def register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 - a factory
    """``register(package, ...)``: write a task package and name it in ``MULTIMODAL_TASKS`` (with those before)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    named: list[str] = []

    def make(package: str, declaration: str | None = None, **fields: str) -> str:
        named.append(write_task(tmp_path, package, declaration, **fields))
        monkeypatch.setenv("MULTIMODAL_TASKS", ", ".join(named))
        return named[-1]

    return make


def test_a_registered_task_is_listed_after_the_built_in_ones_and_its_package_is_trusted(register) -> None:  # noqa: ANN001
    register("reg_colour", serving="Serving(route='colour', setting='colour_model', api='reg_colour.api.ColourAPI')")
    assert [t.name for t in tasks()] == [*BUILT_IN, "reg_colour"]
    assert task_of("RegColourModel").serving.setting == "colour_model"
    assert registered_packages() == ("reg_colour",)
    check_trusted({"class_path": "reg_colour.model.RegColourModel", "init_args": {}}, "x.ckpt")
    with pytest.raises(UserError, match=r"names class 'other_pkg\.Model' at model\.init_args\.head, outside"):
        check_trusted({"class_path": "reg_colour.model.M", "init_args": {"head": {"class_path": "other_pkg.Model"}}},
                      "x.ckpt")  # fmt: skip


def test_without_registration_the_built_in_tasks_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MULTIMODAL_TASKS", raising=False)
    assert [t.name for t in tasks()] == BUILT_IN and registered_packages() == ()
    with pytest.raises(UserError, match="refusing to import it .*MULTIMODAL_TASKS"):
        check_trusted({"class_path": "reg_colour.model.RegColourModel"}, "x.ckpt")


@pytest.mark.parametrize(
    ("package", "declaration", "fields", "message"),
    [
        (None, None, {}, "task module 'no_such_tasks.task' (from MULTIMODAL_TASKS) cannot be imported: No module"),
        ("reg_empty", "OTHER = 1\n", {}, "task module 'reg_empty.task' (from MULTIMODAL_TASKS) declares no TASK"),
        ("reg_twin", None, {"model": "reg_twin.model.ProductTagger"},
         "declares the class name ProductTagger, already that of task 'tagging'"),
        ("reg_route", None, {"serving": "Serving(route='tag', setting='other', api='reg_route.api.A')"},
         "declares the route /tag, already that of task 'tagging'"),
        ("reg_flag", None, {"serving": "Serving(route='other', setting='index', api='reg_flag.api.A')"},
         "declares the serve option --index, already that of task 'search'"),
    ],
)  # fmt: skip
def test_a_bad_registration_is_a_one_line_error(
    register,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    package: str | None,
    declaration: str | None,
    fields: dict[str, str],
    message: str,
) -> None:
    if package is None:
        monkeypatch.setenv("MULTIMODAL_TASKS", "no_such_tasks.task")
    else:
        register(package, declaration, **fields)
    with pytest.raises(UserError) as err:
        tasks()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_serve_offers_a_registered_task_by_its_option(register) -> None:  # noqa: ANN001
    from multimodal.serve.app import Settings, check
    from multimodal.serve.cli import parser, settings

    with pytest.raises(UserError, match=r"^nothing to serve: give at least one of --tagger CKPT, --captioner CKPT, "
                       r"--index FOLDER$"):  # fmt: skip
        check(Settings())
    register("reg_words", serving="Serving(route='words', setting='words_model', api='reg_words.api.WordsAPI')")
    args = parser().parse_args(["--words_model", "w.ckpt"])
    given = settings(args)
    assert given.model("words_model") == "w.ckpt" and given.model("tagger") is None
    with pytest.raises(UserError, match="--tagger CKPT, --captioner CKPT, --index FOLDER, --words_model CKPT$"):
        check(Settings())
    register("reg_port", serving="Serving(route='port', setting='port', api='reg_port.api.A')")
    with pytest.raises(UserError, match="asks for the serve option --port, which `multimodal serve` already has"):
        parser()


def test_an_entry_point_registers_a_task_and_help_stays_light(tmp_path: Path) -> None:
    """An installed distribution's entry point (a ``.dist-info`` on the path, as ``pip install`` writes one)
    registers its task; ``multimodal --help`` and ``multimodal serve --help`` name it without importing torch."""
    write_task(tmp_path, "plugin_tasks", serving="Serving(route='plug', setting='plug_model', api='plugin_tasks.A')")
    info = tmp_path / "plugin_tasks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-tasks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[multimodal.tasks]\nplug = plugin_tasks.task\n")
    script = (
        "import contextlib, io, sys\n"
        "from multimodal.cli import main\n"
        "from multimodal.task import registered_packages, tasks\n"
        "print([t.name for t in tasks()], registered_packages())\n"
        "for argv in (['--help'], ['serve', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code in (0, None), argv\n"
        "heavy = [m for m in ('torch', 'lightning', 'litserve') if m in sys.modules]\n"
        "print('heavy', heavy)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "['tagging', 'captioning', 'search', 'plugin_tasks'] ('plugin_tasks',)" in out
    assert "plugin_tasks PluginTasksModel (serve --plug_model: /plug)" in out
    assert "--plug_model CKPT" in out and "heavy []" in out
