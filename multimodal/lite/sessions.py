"""The ONNX Runtime sessions of an export folder, on NumPy arrays: the folder checked (format, file hashes, label
counts against the graphs' output widths) as :mod:`multimodal.onnx.runtime` checks it, with no torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from multimodal.errors import UserError
from multimodal.onnx.manifest import MANIFEST, check_files, read_model_manifest
from multimodal.onnx.preprocess import Preprocessor

LOAD_ERRORS = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoModel", "NoSuchFile", "NotImplemented")


def session(path: str | Path, threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU with all graph optimisations; ``threads`` intra-op threads
    (default: ``OMP_NUM_THREADS`` when set, else ONNX Runtime's default). Idle threads sleep instead of spinning:
    a process also running torch (re-ranker, captioner, the data loader) or several sessions must not lose its
    cores to threads that wait for work."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 0)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except tuple(getattr(state, name) for name in LOAD_ERRORS) as err:  # a truncated, empty or foreign file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path} cannot be read as an ONNX graph ({first.rsplit('failed:', 1)[-1].strip()})") from None


def check_int8(folder: str | Path, info: dict[str, Any], int8: bool) -> None:
    """A one-line error when the export lacks the graphs of the precision asked for."""
    graphs = info["graphs"].values()
    if int8 and any("int8_file" not in g for g in graphs):
        raise UserError(f"{folder} has no int8 graphs: export it with --quantize int8")
    if not int8 and any("file" not in g for g in graphs):
        raise UserError(f"{folder} holds int8 graphs only: run it with --runtime onnx-int8")


def check_graph_widths(
    folder: Path,
    info: dict[str, Any],
    int8: bool,
    name: str,
    expected: dict[str, tuple[str, int]],
    widths: dict[str, int],
    outputs: list[str] | None = None,
) -> None:
    """Refuse graph ``name`` when its outputs (``outputs``, last dimensions ``widths``) do not fit what
    ``model.json`` says (``expected``: output -> (what it is, its width)), naming the file and both counts."""
    graph = info["graphs"][name]
    file = graph["int8_file"] if int8 else graph["file"]
    problem = f"{folder / MANIFEST} does not match {file}"
    if outputs is not None and outputs != list(graph["outputs"]):
        raise UserError(f"{problem}: outputs {', '.join(graph['outputs'])}; graph outputs {', '.join(outputs)}")
    for output, (what, count) in expected.items():
        width = "none" if outputs is not None and output not in outputs else widths.get(output, count)
        if width != count:  # a width the graph leaves open (or did not record) is not compared
            raise UserError(f"{problem}: {what}: {count}, graph outputs: {width}")


def tagger_widths(
    name: str, vocabularies: dict[str, list[str]], tag_vocabularies: dict[str, list[str]], fused_dim: int
) -> dict[str, tuple[str, int]]:
    """What the width of each output of a tagger's graph ``name`` must be: a label (or tag) count per head and the
    fused vector's width; none for the towers alone."""
    if not name.startswith("tagger"):
        return {}
    labels = {k: (f"labels for {k}", len(v)) for k, v in vocabularies.items()}
    tags = {f"tags/{k}": (f"tags for {k}", len(v)) for k, v in tag_vocabularies.items()}
    return labels | tags | {"fused": ("fused_dim", fused_dim)}


class Export:
    """An export folder: its manifest, preprocessing and graphs (sessions made when first used).

    Args:
        folder: the export folder.
        int8: run its int8 graphs.
        widths: graph name -> {output: (what it is, its width)} that ``model.json``'s labels say (the task's).
    """

    def __init__(self, folder: str | Path, int8: bool, widths: Any) -> None:
        self.folder, self.int8, self.widths = Path(folder), int8, widths
        self.info: dict[str, Any] = read_model_manifest(folder)
        check_files(folder, self.info, int8)
        self.settings: dict[str, Any] = dict(self.info.get("settings") or {})
        self.pre = Preprocessor(folder, self.info)
        self._sessions: dict[str, Any] = {}
        check_int8(folder, self.info, int8)

    def check_widths(self, name: str, widths: dict[str, int], outputs: list[str] | None = None) -> None:
        """:func:`check_graph_widths` of graph ``name`` of this export."""
        check_graph_widths(self.folder, self.info, self.int8, name, self.widths(name), widths, outputs)

    def check_recorded_widths(self) -> None:
        """Every graph's recorded widths against the labels (no graph opened)."""
        for name, graph in self.info["graphs"].items():
            self.check_widths(name, graph.get("widths") or {})

    def has_graph(self, name: str) -> bool:
        return name in self.info["graphs"]

    def session(self, name: str) -> Any:
        """The session of graph ``name``, checked against the labels when first made."""
        if name not in self._sessions:
            graph = self.info["graphs"].get(name)
            if graph is None:
                raise UserError(f"{self.folder} holds no '{name}' graph (it has {', '.join(self.info['graphs'])})")
            sess = session(self.folder / (graph["int8_file"] if self.int8 else graph["file"]))
            fixed = {o.name: o.shape[-1] for o in sess.get_outputs() if o.shape and isinstance(o.shape[-1], int)}
            self.check_widths(name, fixed, [o.name for o in sess.get_outputs()])
            self._sessions[name] = sess
        return self._sessions[name]

    def run(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of graph ``name``, by output name, for the named input arrays (the graph reads its own)."""
        graph = self.info["graphs"][name]
        if "pixel_values" in graph["inputs"] and inputs["pixel_values"].ndim == 5:
            raise UserError(
                f"{self.folder}: an ONNX export reads one photo per product; for products with several photos, run "
                "the checkpoint itself with the full install"
            )
        outputs = self.session(name).run(None, {k: inputs[k] for k in graph["inputs"]})
        return dict(zip(graph["outputs"], outputs, strict=True))
