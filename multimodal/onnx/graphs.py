"""The inference graphs of each task as plain modules with tensor inputs and a tuple of tensor outputs, the form
``torch.onnx.export`` takes. Each wraps the task's own methods (no copy of the model's code), so eager and ONNX
compute the same function.

A graph is described by a :class:`Graph`: its name (the ``.onnx`` file), input and output names, which inputs
have a dynamic sequence axis, and the module. ``graphs_of(model)`` lists a task's graphs; ``extra`` adds the
towers alone (``vision``, ``text``) for feature extraction and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from multimodal.errors import UserError

PIXELS = ("pixel_values",)
TOKENS = ("input_ids", "attention_mask")
SEQUENCE_INPUTS = frozenset(TOKENS)


@dataclass
class Graph:
    """One exported graph: ``module(*inputs) -> tuple(outputs)``."""

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)


class VisionTower(nn.Module):
    """``pixel_values (B, 3, H, W)`` -> tokens ``(B, N, D)``, pooled ``(B, D)``."""

    def __init__(self, vision: nn.Module) -> None:
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        f = self.vision(pixel_values)
        return f.tokens, f.pooled


class TextTower(nn.Module):
    """``input_ids, attention_mask (B, T)`` -> tokens ``(B, T, D)``, token mask ``(B, T)``, pooled ``(B, D)``."""

    def __init__(self, text: nn.Module) -> None:
        super().__init__()
        self.text = text

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = self.text(input_ids, attention_mask)
        return f.tokens, f.mask, f.pooled


class TaggerProbs(nn.Module):
    """The tagger's head probabilities (softmax per attribute, sigmoid per tag column), in ``keys`` order, and the
    fused vector ``(B, D)`` the heads read.

    ``modalities`` says which inputs the graph takes: ``both`` (with ``has_image`` / ``has_text`` flags, so one
    graph serves mixed batches), ``image`` (photo only: the text is the learned stand-in) or ``text``.
    """

    def __init__(self, tagger: nn.Module, modalities: str) -> None:
        super().__init__()
        self.tagger, self.modalities = tagger, modalities
        self.keys = [*tagger.heads.keys(), *(f"tags/{k}" for k in tagger.tag_heads.keys())]

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        batch = self.batch(*inputs)
        logits, fused = self.tagger.logits_and_fused(batch)
        probs = (logits[k].sigmoid() if k.startswith("tags/") else logits[k].softmax(-1) for k in self.keys)
        return (*probs, fused)

    def batch(self, *inputs: Tensor) -> dict[str, Tensor]:
        if self.modalities == "both":
            names = ("pixel_values", "input_ids", "attention_mask", "has_image", "has_text")
        else:  # a batch without one modality's inputs: that tower does not run (ProductTagger._fuse)
            names = PIXELS if self.modalities == "image" else TOKENS
        return dict(zip(names, inputs, strict=True))


class Method(nn.Module):
    """A model method of tensors as a module (``embed_text``, ``embed_image``...)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        out = getattr(self.model, self.method)(*inputs)
        return tuple(out) if isinstance(out, tuple) else (out,)


class ProductVectors(nn.Module):
    """The retriever's product vectors from the inputs its ``product`` setting reads."""

    def __init__(self, retriever: nn.Module, inputs: tuple[str, ...]) -> None:
        super().__init__()
        self.retriever, self.names = retriever, inputs

    def forward(self, *inputs: Tensor) -> tuple[Tensor]:
        return (self.retriever.embed_products(dict(zip(self.names, inputs, strict=True))),)


class CaptionVision(nn.Module):
    """The captioner's vision encoder and conditioning: ``pixel_values, has_image`` -> the vision tokens, mask and
    pooled vector (absent photos get the learned stand-in), then what the language model reads of them: the prefix
    embeddings and mask (early), the cross-attention states and mask (cross-attention) or the image vector added
    to the last hidden states (late)."""

    def __init__(self, captioner: nn.Module) -> None:
        super().__init__()
        self.captioner = captioner

    @staticmethod
    def outputs(captioner: nn.Module) -> tuple[str, ...]:
        # The conditioning's declared kind (fusion.conditioning.ConditioningKind) names what the LM reads.
        return ("tokens", "mask", "pooled", *captioner.conditioning.kind.tensor_names)

    def forward(self, pixel_values: Tensor, has_image: Tensor) -> tuple[Tensor, ...]:
        f = self.captioner.encode_images(pixel_values, has_image)
        conditioning = self.captioner.conditioning
        return (f.tokens, f.mask, f.pooled, *conditioning(f).tensors(conditioning.kind))


def tower_graphs(model: nn.Module) -> list[Graph]:
    return [
        Graph("vision", VisionTower(model.vision), PIXELS, ("tokens", "pooled")),
        Graph("text", TextTower(model.text), TOKENS, ("tokens", "mask", "pooled")),
    ]


def graphs_of(model: nn.Module, extra: tuple[str, ...] = ()) -> list[Graph]:
    """The graphs an export of ``model`` holds, as its task declares them (and the towers alone when ``extra``
    names them)."""
    from multimodal.task import resolve, task_of

    task = task_of(type(model).__name__)
    if task is None or task.onnx is None:
        raise UserError(f"ONNX export does not know the task {type(model).__name__}")
    graphs: list[Graph] = resolve(task.onnx.graphs)(model)
    unknown = set(extra) - {"vision", "text"}
    if unknown:
        raise UserError(f"unknown extra graph(s) {sorted(unknown)}: choose from vision, text")
    graphs += [g for g in tower_graphs(model) if g.name in extra]
    return graphs


def tagger_graphs(tagger: nn.Module) -> list[Graph]:
    """A tagger's graphs: photo and texts, and each alone (a batch missing a modality skips its tower)."""
    both = TaggerProbs(tagger, "both")
    keys = (*both.keys, "fused")
    return [
        Graph("tagger", both, (*PIXELS, *TOKENS, "has_image", "has_text"), keys),
        Graph("tagger_image", TaggerProbs(tagger, "image"), PIXELS, keys),
        Graph("tagger_text", TaggerProbs(tagger, "text"), TOKENS, keys),
    ]


def retriever_graphs(retriever: nn.Module) -> list[Graph]:
    """A retriever's graphs: query text and photo vectors, and product vectors unless products are photos alone."""
    graphs = [
        Graph("embed_text", Method(retriever, "embed_text"), TOKENS, ("vector",)),
        Graph("embed_image", Method(retriever, "embed_image"), PIXELS, ("vector",)),
    ]
    if retriever.product != "image":
        texts = ("product_input_ids", "product_attention_mask") if product_text_separate(retriever) else TOKENS
        fused = retriever.product == "fused"
        names = (*(PIXELS if fused else ()), *texts, *(("has_text",) if fused else ()))
        graphs.append(Graph("embed_product", ProductVectors(retriever, names), names, ("vector",)))
    return graphs


def captioner_graphs(captioner: nn.Module) -> list[Graph]:
    """A captioner's vision side (the tokens and conditioning its language model reads)."""
    inputs = (*PIXELS, "has_image")
    return [Graph("caption_vision", CaptionVision(captioner), inputs, CaptionVision.outputs(captioner))]


def product_text_separate(retriever: nn.Module) -> bool:
    """Whether the retriever's product text is tokenized apart from the query text (other columns)."""
    return retriever.product_columns != retriever.query_columns


def image_size(model: nn.Module) -> tuple[int, int]:
    """``(H, W)`` of the model's eval transform output."""
    from PIL import Image

    h, w = model.image_transform(False)(Image.new("RGB", (64, 64))).shape[-2:]
    return int(h), int(w)


def example_inputs(graph: Graph, model: nn.Module, batch: int = 2, seq: int = 8) -> tuple[Tensor, ...]:
    """Inputs of the right dtypes and shapes to trace ``graph`` (random pixels, token ids from the tokenizer's
    range, one padded row, a mix of present and absent modalities)."""
    gen = torch.Generator().manual_seed(0)
    text = getattr(model, "text", None)
    vocab = int(text.tokenizer.vocab_size) if text is not None else 2000
    out: list[Tensor] = []
    for name in graph.inputs:
        if name == "pixel_values":
            out.append(torch.randn(batch, 3, *image_size(model), generator=gen))
        elif name.endswith("input_ids"):
            out.append(torch.randint(min(1000, vocab // 2), vocab, (batch, seq), generator=gen))
        elif name.endswith("attention_mask"):
            mask = torch.ones(batch, seq, dtype=torch.long)
            mask[0, seq // 2 :] = 0  # one padded row
            out.append(mask)
        elif name in ("has_image", "has_text"):
            flags = torch.ones(batch, dtype=torch.bool)
            flags[-1] = name == "has_image"  # the last item has a photo and no text
            out.append(flags)
        else:  # pragma: no cover - every graph's inputs are listed above
            raise ValueError(name)
    return tuple(out)
