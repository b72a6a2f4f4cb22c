"""The runtime install against the full one: what ``pip install multimodal-products`` (no ``[full]``) holds.

The runtime install runs ONNX exports with ONNX Runtime, NumPy, PIL and ``tokenizers``: no torch, Lightning,
transformers or timm. This program builds it as a user would, in a second virtual environment (``pip install`` of
this checkout without extras: the package index, or pip's cache), checks that ``import torch`` fails there, and
prints its size against the environment it runs in (the full install, ``.[dev]``), in MB.

It also prints, from the installed packages' metadata alone, the closure of the runtime's requirements: the
distributions ``pip install multimodal-products`` pulls in, and their size in this environment. ``--smoke`` prints
that estimate only (no second environment is built).

The other benchmarks time the runtime install with the Python this program built (``--runtime-venv``); without
one they run the full install's Python with ``tests/torch_blocked`` on ``PYTHONPATH`` (torch and the training stack
unimportable: the same code path, with the full install's files on disk).

    python -m benchmarks.runtime_env --venv runs/runtime-venv --out benchmarks/results/runtime_env.json
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import machine, ratio, say, write_json
from benchmarks.harness import ROOT, Option, parse, parser

PACKAGE = "multimodal-products"
# what the runtime install must not hold (distribution names as pip normalises them)
HEAVY = {"torch", "torchvision", "lightning", "pytorch-lightning", "transformers", "timm", "open-clip-torch"}
BLOCKED = ROOT / "tests" / "torch_blocked"  # its sitecustomize makes the heavy packages unimportable

OPTIONS = {
    "--venv": Option("runs/runtime-venv", "the runtime install's virtual environment (built when missing)"),
    "--out": Option("benchmarks/results/runtime_env.json", "result JSON"),
}
SMOKE: dict[str, Any] = {}


def normal(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return name.lower().replace("_", "-").replace(".", "-")


def closure(requirements: list[str], extras: tuple[str, ...] = ()) -> set[str]:
    """The installed distributions ``requirements`` pull in, transitively (markers evaluated here, requested extras
    followed), by normalised name: what pip installs for them, as far as this environment's metadata tells."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [(r, extras) for r in requirements]
    while todo:
        text, asked = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (*asked, "")):
            continue
        name = normal(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [(r, tuple(req.extras)) for r in metadata.requires(req.name) or []]
        except metadata.PackageNotFoundError:
            continue  # an optional dependency not installed here
    return seen


def runtime_requirements() -> list[str]:
    """The runtime install's requirements: this package's, without extras."""
    return [r for r in metadata.requires(PACKAGE) or [] if "extra ==" not in r]


def installed_mb(names: set[str]) -> float:
    """Size on disk of the files of the installed distributions ``names`` (MB)."""
    total = 0
    for dist in metadata.distributions():
        if normal(dist.metadata["Name"]) in names:
            for f in dist.files or []:
                path = Path(dist.locate_file(f))
                total += path.stat().st_size if path.is_file() else 0
    return total / 1e6


def folder_mb(folder: Path) -> float:
    """Size on disk of a folder's files (links not followed), MB."""
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            path = Path(base, name)
            if not path.is_symlink():
                total += path.stat().st_size
    return total / 1e6


def runtime_python(venv: str | Path | None) -> tuple[str, dict[str, str]]:
    """The Python of the runtime install and the environment to run it with: ``venv``'s own Python, or without
    one this Python with the heavy packages blocked."""
    if venv is not None and (Path(venv) / "bin" / "python").is_file():
        return str(Path(venv) / "bin" / "python"), {}
    return sys.executable, {"PYTHONPATH": str(BLOCKED)}


def build(venv: Path) -> Path:
    """The runtime install in ``venv`` (``pip install`` of this checkout without extras), rebuilt when the
    project's requirements changed; returns its Python."""
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = hashlib.sha256("\n".join(sorted(runtime_requirements())).encode()).hexdigest()
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    say(f"building the runtime install in {venv}: pip install {ROOT.name} (no extras)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", str(ROOT)], check=True)
    stamp.write_text(wanted)
    return python


def torch_absent(python: Path) -> bool:
    """Whether ``import torch`` fails with ``python``."""
    return subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0


def main(argv: list[str] | None = None) -> None:
    args = parse(parser("runtime_env", __doc__, OPTIONS), argv, SMOKE, "benchmarks.runtime_env")
    runtime = closure(runtime_requirements())
    full = {normal(d.metadata["Name"]) for d in metadata.distributions()}
    result: dict[str, Any] = {"machine": machine(), "runtime_distributions": sorted(runtime),
                              "heavy_in_runtime": sorted(runtime & HEAVY),
                              "estimate_mb": {"runtime": round(installed_mb(runtime), 1),
                                              "full": round(installed_mb(full), 1)}}  # fmt: skip
    est = result["estimate_mb"]
    result["ratios"] = {"full_over_runtime_installed_here": ratio(est["full"], est["runtime"], 2)}
    print(f"runtime requirements pull in {len(runtime)} distributions (heavy among them: "
          f"{result['heavy_in_runtime'] or 'none'}); installed here they take {est['runtime']:.0f} MB of "
          f"{est['full']:.0f} MB ({result['ratios']['full_over_runtime_installed_here']}x smaller)")  # fmt: skip
    if not args.smoke:
        python = build(Path(args.venv))
        sizes = {"runtime": round(folder_mb(Path(args.venv)), 1), "full": round(folder_mb(Path(sys.prefix)), 1)}
        result |= {"venv_mb": sizes, "full_over_runtime": ratio(sizes["full"], sizes["runtime"], 2),
                   "torch_absent_in_runtime": torch_absent(python)}  # fmt: skip
        result["ratios"]["full_over_runtime_venv"] = result["full_over_runtime"]
        print(
            f"runtime venv {sizes['runtime']:.0f} MB, full venv {sizes['full']:.0f} MB: "
            f"{result['full_over_runtime']}x; import torch fails there: {result['torch_absent_in_runtime']}"
        )
    write_json(args.out, result)


if __name__ == "__main__":
    main()
