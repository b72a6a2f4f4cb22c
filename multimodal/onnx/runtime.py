"""ONNX Runtime behind the same inference API: an export folder (:mod:`multimodal.onnx.export`) loads as a task
object with the methods the predictors, the batch commands and the search query encoder call on a trained
model (``predict_step``, ``decode``, ``embed_text``...), each running an ``onnxruntime.InferenceSession``.

The objects are Lightning modules without weights, so ``trainer.predict`` (the resumable batch jobs) runs them
as it runs the eager models; tensors go to NumPy at the session boundary and come back as CPU tensors.

Loading refuses an export whose files differ from the hashes recorded at export, and one whose label
vocabularies do not fit its graphs: the label counts are compared with the widths ``model.json`` recorded and,
when a graph's session is made, with the graph's own output shapes (the tagger's main graph at load). That
second check needs no hash, so it also covers an export written before hashes were recorded and a
``model.json`` edited together with its recorded widths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from encoders.types import tokenize
from multimodal.artefact import Columns, Loaded
from multimodal.errors import UserError
from multimodal.lite.sessions import check_graph_widths, check_int8, tagger_widths
from multimodal.onnx.manifest import check_files, read_model_manifest

RUNTIMES = ("torch", "onnx", "onnx-int8")


def session(path: str | Path, threads: int | None = None) -> Any:
    """:func:`multimodal.lite.sessions.session` with ``threads`` defaulting to torch's thread count, so both
    runtimes get the same cores."""
    from multimodal.lite.sessions import session as make_session

    return make_session(path, threads or torch.get_num_threads())


def output_widths(sess: Any) -> dict[str, int]:
    """The last dimension of every output of a session whose last dimension is fixed."""
    return {o.name: o.shape[-1] for o in sess.get_outputs() if o.shape and isinstance(o.shape[-1], int)}


class _Tokenizing:
    """The ``text`` attribute the search query encoder calls: ``tokenize`` and ``tokenizer``."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, Tensor]:
        return tokenize(self.tokenizer, texts, max_length or self.max_length)


class OnnxTask(L.LightningModule):
    """Base of the ONNX-backed tasks: the export's manifest, its sessions (made when first used), tokenizer and
    image transform."""

    def __init__(self, folder: str | Path, info: dict[str, Any], int8: bool = False) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        from multimodal.onnx.transforms import build_transform

        self.folder, self.info, self.int8 = Path(folder), info, int8
        self.settings: dict[str, Any] = dict(info.get("settings") or {})
        self._sessions: dict[str, Any] = {}
        self._transform = build_transform(info["image_transform"], self.folder)
        tokenizer = AutoTokenizer.from_pretrained(self.folder / "tokenizer")
        self.text = _Tokenizing(tokenizer, int(info["max_length"]))
        check_int8(folder, info, int8)

    def widths(self, name: str) -> dict[str, tuple[str, int]]:
        """What the width of each output of graph ``name`` must be, by output name: (what it is, its width)."""
        return {}

    def check_widths(self, name: str, widths: dict[str, int], outputs: list[str] | None = None) -> None:
        """:func:`multimodal.lite.sessions.check_graph_widths` of graph ``name`` of this export."""
        check_graph_widths(self.folder, self.info, self.int8, name, self.widths(name), widths, outputs)

    # ------------------------------------------------------------------------------------------------ graphs
    def has_graph(self, name: str) -> bool:
        return name in self.info["graphs"]

    def session(self, name: str) -> Any:
        if name not in self._sessions:
            graph = self.info["graphs"].get(name)
            if graph is None:
                raise UserError(f"{self.folder} holds no '{name}' graph (it has {', '.join(self.info['graphs'])})")
            file = graph["int8_file"] if self.int8 else graph["file"]
            sess = session(self.folder / file)
            self.check_widths(name, output_widths(sess), [o.name for o in sess.get_outputs()])
            self._sessions[name] = sess
        return self._sessions[name]

    def run_graph(self, name: str, **inputs: Tensor) -> list[Tensor]:
        """Outputs of graph ``name`` (CPU tensors) for the named inputs."""
        graph = self.info["graphs"][name]
        if "pixel_values" in graph["inputs"] and inputs["pixel_values"].dim() == 5:
            raise UserError(
                f"{self.folder}: an ONNX export reads one photo per product; for products with several photos, run "
                "the checkpoint itself (--runtime torch)"
            )
        feed = {k: _numpy(inputs[k]) for k in graph["inputs"]}
        return [torch.from_numpy(np.ascontiguousarray(o)) for o in self.session(name).run(None, feed)]

    # --------------------------------------------------------------------------------- what the data side asks
    def image_transform(self, train: bool) -> Any:
        return self._transform

    def on_predict_model_eval(self) -> None:  # nothing to switch
        pass


def _numpy(x: Tensor) -> np.ndarray:
    x = x.detach().cpu()
    return x.numpy() if x.dtype != torch.bool else x.numpy().astype(bool)


class OnnxTagger(OnnxTask):
    """A :class:`~multimodal.tagging.tagger.ProductTagger` export: ``predict_step``, ``decode`` and ``fused``."""

    def __init__(self, folder: str | Path, info: dict[str, Any], int8: bool = False) -> None:
        super().__init__(folder, info, int8)
        self.vocabularies: dict[str, list[str]] = self.settings["vocabularies"]
        self.tag_vocabularies: dict[str, list[str]] = self.settings["tag_vocabularies"]
        self.tag_threshold: float = float(self.settings["tag_threshold"])
        self.fused_dim: int = int(self.settings["fused_dim"])
        self.keys = [*self.vocabularies, *(f"tags/{k}" for k in self.tag_vocabularies)]
        for name, graph in info["graphs"].items():  # the widths recorded at export: no graph to open
            self.check_widths(name, graph.get("widths") or {})
        self.session("tagger")  # the graph's own widths, and a graph that cannot be read, now rather than mid-job

    def widths(self, name: str) -> dict[str, tuple[str, int]]:
        return tagger_widths(name, self.vocabularies, self.tag_vocabularies, self.fused_dim)

    def text_fn(self) -> Any:
        """Every text column joined by the separator the export recorded (the eager tagger's), as the torch-free
        runtime joins them; an export from before the record: the default one."""
        from multimodal.onnx.preprocess_export import SEPARATOR
        from multimodal.towers import JoinedText

        text = (self.info.get("preprocess") or {}).get("text") or {}
        return JoinedText(self.text.tokenizer, self.text.max_length, text.get("separator", SEPARATOR))

    def graph_for(self, batch: dict[str, Any]) -> tuple[str, dict[str, Tensor]]:
        """The graph for a batch and its inputs: photo-only or text-only when no item has the other, else both."""
        has_image, has_text = batch["has_image"].bool(), batch["has_text"].bool()
        if not has_text.any() and self.has_graph("tagger_image"):
            return "tagger_image", {"pixel_values": batch["pixel_values"]}
        if not has_image.any() and self.has_graph("tagger_text"):
            return "tagger_text", {k: batch[k] for k in ("input_ids", "attention_mask")}
        names = ("pixel_values", "input_ids", "attention_mask", "has_image", "has_text")
        return "tagger", {k: batch[k] for k in names}

    def outputs(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        name, inputs = self.graph_for(batch)
        return dict(zip(self.info["graphs"][name]["outputs"], self.run_graph(name, **inputs), strict=True))

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, Any]:
        if not batch["ids"]:
            return {"ids": [], "probs": {}}
        out = self.outputs(batch)
        return {"ids": batch["ids"], "probs": {k: out[k] for k in self.keys}}

    def fused(self, batch: dict[str, Any]) -> Tensor:
        return self.outputs(batch)["fused"]

    def decode(self, probs: dict[str, Tensor], top_k: int = 1) -> list[dict[str, Any]]:
        from multimodal.tagging.tagger import decode_probs

        return decode_probs(probs, self.vocabularies, self.tag_vocabularies, self.tag_threshold, top_k)


class OnnxRetriever(OnnxTask):
    """A :class:`~multimodal.search.retriever.ProductRetriever` export: query and product vectors."""

    reranker = None  # the re-ranker stays in the checkpoint (eager)

    def __init__(self, folder: str | Path, info: dict[str, Any], int8: bool = False) -> None:
        super().__init__(folder, info, int8)
        self.embed_dim: int = int(self.settings["embed_dim"])
        self.product: str = self.settings["product"]
        self.query_columns = self.settings.get("query_columns")
        self.product_columns = self.settings.get("product_columns")
        for name, graph in info["graphs"].items():
            self.check_widths(name, graph.get("widths") or {})

    def widths(self, name: str) -> dict[str, tuple[str, int]]:
        return {"vector": ("embed_dim", self.embed_dim)} if name.startswith("embed_") else {}

    def text_fn(self) -> Any:
        from multimodal.search.retriever import QueryAndProductText

        return QueryAndProductText(self.text.tokenizer, self.text.max_length, self.query_columns, self.product_columns)

    def embed_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.run_graph("embed_text", input_ids=input_ids, attention_mask=attention_mask)[0]

    def embed_image(self, pixel_values: Tensor) -> Tensor:
        return self.run_graph("embed_image", pixel_values=pixel_values)[0]

    def embed_products(self, batch: dict[str, Any]) -> Tensor:
        if self.product == "image":
            return self.embed_image(batch["pixel_values"])
        inputs = dict(batch)
        if "product_input_ids" not in batch:
            inputs.update(product_input_ids=batch["input_ids"], product_attention_mask=batch["attention_mask"])
        return self.run_graph("embed_product", **inputs)[0]

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, Any]:
        if not batch["ids"]:
            return {"ids": [], "embeddings": torch.zeros(0, self.embed_dim)}
        return {"ids": batch["ids"], "embeddings": self.embed_products(batch)}


def load_onnx(folder: str | Path, int8: bool = False, hashed: bool = False) -> Loaded:
    """The task object of an ONNX export folder, as a :class:`multimodal.artefact.Loaded`.

    Args:
        folder: the export folder.
        int8: run its int8 graphs.
        hashed: its files were just checked against their hashes (:func:`multimodal.onnx.export.check_files`).
    """
    from multimodal.task import resolve, task_of

    info = read_model_manifest(folder)
    if not hashed:
        check_files(folder, info, int8)
    task = task_of(info["task"])
    if task is None or task.onnx is None or task.onnx.runtime is None:
        raise UserError(
            f"{folder} is a {info['task']} export: its vision graph is for other runtimes; "
            "run this task with --runtime torch"
        )
    model = resolve(task.onnx.runtime)(folder, info, int8)
    columns = Columns.from_manifest(info["columns"])
    data, sha = dict(info.get("data") or {}), info.get("checkpoint_sha256")
    return Loaded(model, columns, data, {}, Path(folder), sha, "onnx-int8" if int8 else "onnx")
