"""Preprocessing of an ONNX export with PIL, NumPy and ``tokenizers`` alone: the arrays its graphs read.

An export records its preprocessing as numbers in ``model.json`` (``preprocess``, written by
:mod:`multimodal.onnx.preprocess_export`): the image steps (resize, centre crop, RGB, to-tensor, normalise) and the
text settings (the ``tokenizers`` JSON file, maximum length, padding and truncation sides, how a product's text
columns are joined into the text each graph input reads). The functions here give the arrays eager PyTorch feeds
its model: photos through torchvision's PIL code path (whose resize *is* ``PIL.Image.resize``), titles through the
same Rust tokenizer that the Hugging Face fast tokenizer calls.

This module imports no torch, torchvision, lightning, transformers, timm or open_clip, so an export preprocesses
where they are not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from multimodal.errors import UserError

# torchvision's ``InterpolationMode`` values -> PIL's resampling filters (torchvision's ``pil_modes_mapping``).
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def resized_size(width: int, height: int, size: int | list[int], max_size: int | None) -> tuple[int, int]:
    """The (width, height) torchvision's ``Resize(size, max_size=max_size)`` gives a ``width x height`` image.

    An int (or one-item list) is the shorter edge, the longer one scaled and truncated to an int as torchvision
    does; two numbers are ``(height, width)``.
    """
    if isinstance(size, list) and len(size) == 2:
        return int(size[1]), int(size[0])
    short, long = (width, height) if width <= height else (height, width)
    new_short = int(size if isinstance(size, int) else size[0])
    new_long = int(new_short * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop(image: Image.Image, size: list[int]) -> Image.Image:
    """torchvision's ``CenterCrop(size)`` on a PIL image: zero padding when the crop is larger, then the box
    whose top-left corner is the rounded half of the margins."""
    crop_h, crop_w = (int(size[0]), int(size[-1]))
    width, height = image.size
    if crop_w > width or crop_h > height:
        left, top = max(crop_w - width, 0) // 2, max(crop_h - height, 0) // 2
        padded = Image.new(image.mode, (max(width, crop_w), max(height, crop_h)), 0)
        padded.paste(image, (left, top))
        image, (width, height) = padded, padded.size
        if (crop_w, crop_h) == (width, height):
            return image
    top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


def image_array(image: Image.Image, settings: dict[str, Any]) -> np.ndarray:
    """One photo as the ``(3, H, W)`` float32 array the graphs' ``pixel_values`` hold.

    Args:
        image: a PIL image (the data side gives 8-bit RGB, :func:`multimodal.data.images.load_image`).
        settings: ``model.json``'s ``preprocess.image`` (or ``image_transform``): ``{"steps": [...]}``.

    Raises:
        UserError: the settings name a step this module does not know, or none was recorded.
    """
    if not settings or "steps" not in settings:
        reason = (settings or {}).get("unsupported", "no image steps recorded")
        raise UserError(f"this export's photos cannot be preprocessed without torch: {reason}")
    array: np.ndarray | None = None
    for step in settings["steps"]:
        op = step["op"]
        if op == "rgb":
            image = image.convert("RGB") if image.mode != "RGB" else image
        elif op == "resize":
            size = resized_size(*image.size, step["size"], step.get("max_size"))
            if size != image.size:  # torchvision returns the image itself when the size is already right
                image = image.resize(size, PIL_FILTERS[step["interpolation"]])
        elif op == "center_crop":
            image = center_crop(image, step["size"])
        elif op == "to_tensor":  # (H, W, C) uint8 -> (C, H, W) float32 in [0, 1], as ToTensor divides
            array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
            array = np.ascontiguousarray(array.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)
        elif op == "normalize":
            if array is None:
                raise UserError("model.json: the image step 'normalize' comes before 'to_tensor'")
            mean = np.asarray(step["mean"], dtype=np.float32).reshape(-1, 1, 1)
            std = np.asarray(step["std"], dtype=np.float32).reshape(-1, 1, 1)
            array = (array - mean) / std
        else:
            raise UserError(f"model.json: unknown image step '{op}' (known: rgb, resize, center_crop, ...)")
    if array is None:
        raise UserError("model.json: the image steps end without 'to_tensor'")
    return array


def images_array(images: Sequence[Image.Image], settings: dict[str, Any]) -> np.ndarray:
    """A batch of photos as ``(B, 3, H, W)`` float32 (every photo the same size after the crop)."""
    return np.stack([image_array(image, settings) for image in images]).astype(np.float32, copy=False)


def load_tokenizer(path: str | Path) -> Any:
    """A ``tokenizers.Tokenizer`` from its JSON file; a one-line error naming the file when it cannot be read."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for a missing or malformed file
        raise UserError(f"{path} cannot be read as a tokenizers JSON file ({str(err).splitlines()[0]})") from None


def text_arrays(texts: Sequence[str], tokenizer: Any, settings: dict[str, Any]) -> dict[str, np.ndarray]:
    """Token ids and attention mask ``(B, T)`` int64 of ``texts``, padded to the longest and truncated to
    ``max_length`` as the Hugging Face tokenizer call (``padding=True, truncation=True``) does.

    Args:
        texts: the strings, already joined from a product's columns (:func:`join_texts`).
        tokenizer: a ``tokenizers.Tokenizer`` or the path of its JSON file.
        settings: ``model.json``'s ``preprocess.text``.
    """
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    tokenizer.no_padding()  # the saved JSON may carry other settings: set the call's own every time
    tokenizer.enable_truncation(
        int(settings["max_length"]), stride=0, strategy="longest_first", direction=settings["truncation_side"]
    )
    tokenizer.enable_padding(
        direction=settings["padding_side"],
        pad_id=int(settings["pad_id"]),
        pad_type_id=int(settings["pad_type_id"]),
        pad_token=settings["pad_token"],
    )
    tokenizer.encode_special_tokens = bool(settings.get("split_special_tokens", False))
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=bool(settings.get("add_special_tokens", True)))
    ids = np.asarray([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), -1)
    mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(encodings), -1)
    return {"input_ids": ids, "attention_mask": mask}


def join_texts(texts: dict[str, list[str | None]], columns: list[str] | None, separator: str) -> list[str]:
    """Each product's text: its ``columns`` (None: every column, in order) joined by ``separator``, a missing
    value left out, as the eager text functions build it."""
    names = list(texts) if columns is None else columns
    unknown = [c for c in names if c not in texts]
    if unknown:
        raise UserError(f"text column(s) {unknown} are not among the data's text columns {list(texts)}")
    n = len(next(iter(texts.values()))) if texts else 0
    return [separator.join(texts[c][i] for c in names if texts[c][i] is not None) for i in range(n)]


def text_inputs(texts: dict[str, list[str | None]], tokenizer: Any, settings: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every text input of the graphs for a batch of products, from their text columns: ``input_ids`` /
    ``attention_mask`` and, where the export reads a second text, ``product_input_ids`` / ``product_attention_mask``.

    Args:
        texts: column name -> one value (or None) per product, in the data's column order.
        tokenizer: a ``tokenizers.Tokenizer`` or the path of its JSON file.
        settings: ``model.json``'s ``preprocess.text``.
    """
    out: dict[str, np.ndarray] = {}
    for text_input in settings.get("inputs", []):
        joined = join_texts(texts, text_input["columns"], settings["separator"])
        arrays = text_arrays(joined, tokenizer, settings)
        out.update({text_input["prefix"] + k: v for k, v in arrays.items()})
    return out


def preprocess_settings(folder: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """``model.json``'s ``preprocess`` section; a one-line error for an export written before it was recorded."""
    section = info.get("preprocess")
    if not isinstance(section, dict) or "text" not in section or "image" not in section:
        raise UserError(
            f"{Path(folder) / 'model.json'} records no preprocessing for the torch-free runtime: export the "
            "checkpoint again with `multimodal export-model` (or run this export with the full install)"
        )
    return section


class Preprocessor:
    """An export's preprocessing, loaded once: ``images`` and ``texts`` give the graphs' input arrays.

    Args:
        folder: the export folder.
        info: its ``model.json``.
    """

    def __init__(self, folder: str | Path, info: dict[str, Any]) -> None:
        section = preprocess_settings(folder, info)
        self.image_settings: dict[str, Any] = section["image"] or {}
        self.text_settings: dict[str, Any] | None = section["text"]
        self.tokenizer = None
        if self.text_settings is not None:
            self.tokenizer = load_tokenizer(Path(folder) / self.text_settings["tokenizer"])

    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``pixel_values (B, 3, H, W)`` float32 of a batch of photos."""
        return images_array(images, self.image_settings)

    def texts(self, texts: dict[str, list[str | None]]) -> dict[str, np.ndarray]:
        """The graphs' text inputs for a batch of products (:func:`text_inputs`)."""
        if self.text_settings is None:
            return {}
        return text_inputs(texts, self.tokenizer, self.text_settings)

    def queries(self, queries: Sequence[str]) -> dict[str, np.ndarray]:
        """``input_ids`` / ``attention_mask`` of search queries, tokenized as they are (no join)."""
        if self.text_settings is None:
            raise UserError("this export records no text tokenizer")
        return text_arrays(queries, self.tokenizer, self.text_settings)
