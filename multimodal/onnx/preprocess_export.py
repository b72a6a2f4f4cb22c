"""At export time: a model's preprocessing as numbers and a ``tokenizers`` JSON file, for the torch-free runtime.

Writes ``tokenizer.json`` (the fast tokenizer's own Rust tokenizer) into the export folder and returns the
``preprocess`` section of ``model.json`` that :mod:`multimodal.onnx.preprocess` reads::

    "preprocess": {
      "image": {"steps": [{"op": "resize", "size": 67, "interpolation": "bicubic", ...}, ...]},
      "text": {"tokenizer": "tokenizer.json", "max_length": 16, "padding_side": "right", "truncation_side": "right",
               "pad_id": 0, "pad_token": "[PAD]", "pad_type_id": 0, "add_special_tokens": true,
               "split_special_tokens": false, "separator": ". ",
               "inputs": [{"prefix": "", "columns": ["title"]}]}
    }

``inputs`` is the text template: each graph text input (``input_ids`` / ``attention_mask`` with its prefix) reads
the product's ``columns`` joined by ``separator``, missing values left out, as the eager text function does. A
photo transform the runtime cannot reproduce with PIL (a Hugging Face image processor) is recorded as
``{"unsupported": reason}``: the export still runs with the full install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TOKENIZER_FILE = "tokenizer.json"
SEPARATOR = ". "


def image_section(transform_settings: dict[str, Any], transform: Any) -> dict[str, Any]:
    """The image steps for the runtime, from :func:`multimodal.onnx.transforms.describe_transform`'s settings."""
    if transform_settings.get("kind") == "torchvision":
        return {"steps": transform_settings["steps"]}
    processor = type(getattr(transform, "processor", transform)).__name__
    return {
        "unsupported": f"its photos go through a Hugging Face image processor ({processor}), whose tensor "
        "resize PIL does not reproduce; run it with the full install, or train with a timm or open_clip vision tower"
    }


def text_template(model: Any, text_columns: list[str]) -> tuple[list[dict[str, Any]], str]:
    """The graphs' text inputs (prefix, columns) and the separator, read from the model's eager text function.

    A tagger joins every text column; a retriever its query columns and, when they differ, its product columns
    (``product_`` inputs); a captioner's graph reads no text (its prompts belong to decoding).
    """
    from multimodal.search.retriever import QueryAndProductText
    from multimodal.towers import JoinedText

    fn = model.text_fn()  # a captioner's (CaptionText) is neither kind below: its prompts belong to decoding
    if isinstance(fn, QueryAndProductText):
        inputs = [{"prefix": "", "columns": _columns(fn.query_columns, text_columns)}]
        if fn.product_columns != fn.query_columns:  # the eager rule: a second text only when the settings differ
            inputs.append({"prefix": "product_", "columns": _columns(fn.product_columns, text_columns)})
        return inputs, fn.separator
    if isinstance(fn, JoinedText):
        return [{"prefix": "", "columns": list(text_columns)}], fn.separator
    return [], SEPARATOR


def _columns(columns: list[str] | None, text_columns: list[str]) -> list[str]:
    return list(text_columns) if columns is None else list(columns)


def text_section(
    model: Any, tokenizer: Any, max_length: int, text_columns: list[str], work: Path
) -> dict[str, Any] | None:
    """Save ``tokenizer``'s Rust tokenizer as ``work/tokenizer.json``; its call settings and the text template.

    A tokenizer without a ``tokenizers`` backend (a slow Python tokenizer) gives ``None``: no text for the
    torch-free runtime.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    backend.save(str(work / TOKENIZER_FILE))
    inputs, separator = text_template(model, text_columns)
    return {
        "tokenizer": TOKENIZER_FILE,
        "max_length": int(max_length),
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        "pad_id": int(tokenizer.pad_token_id),
        "pad_token": str(tokenizer.pad_token),
        "pad_type_id": int(tokenizer.pad_token_type_id),
        "add_special_tokens": True,
        "split_special_tokens": bool(getattr(tokenizer, "split_special_tokens", False)),
        "separator": separator,
        "inputs": inputs,
    }


def preprocess_section(
    model: Any, text: Any, text_columns: list[str], transform_settings: dict[str, Any], work: Path
) -> dict[str, Any]:
    """``model.json``'s ``preprocess`` section of ``model`` (its text tower or language model ``text``)."""
    return {
        "image": image_section(transform_settings, model.image_transform(False)),
        "text": text_section(model, text.tokenizer, text.max_length, text_columns, work),
    }
