"""An eval image transform as JSON settings and back, so an ONNX export folder preprocesses photos as its
checkpoint did without pickled code.

The towers' eval transforms are torchvision ``Compose`` pipelines (timm's ``create_transform``, open_clip's
preprocess) of resize, centre crop, RGB conversion, to-tensor and normalise; a Hugging Face image processor is
saved with ``save_pretrained`` instead. Anything else is refused at export time, naming the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multimodal.errors import UserError

PROCESSOR_FOLDER = "image_processor"


def _number_list(value: Any) -> list[float]:
    return [float(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]


def describe_transform(transform: Any, folder: Path) -> dict[str, Any]:
    """JSON settings of an eval transform; a Hugging Face processor is saved under ``folder``."""
    from torchvision import transforms as T

    from encoders.hf_vision import HFImageTransform

    if isinstance(transform, HFImageTransform):
        transform.processor.save_pretrained(folder / PROCESSOR_FOLDER)
        return {"kind": "hf_processor", "folder": PROCESSOR_FOLDER}
    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    out: list[dict[str, Any]] = []
    for step in steps:
        name = type(step).__name__
        if isinstance(step, T.Resize):
            size = step.size if isinstance(step.size, int) else list(step.size)
            out.append(
                {
                    "op": "resize",
                    "size": size,
                    "interpolation": step.interpolation.value,
                    "max_size": step.max_size,
                    "antialias": step.antialias,
                }
            )
        elif isinstance(step, T.CenterCrop):
            out.append({"op": "center_crop", "size": list(step.size)})
        elif isinstance(step, T.Normalize):
            out.append({"op": "normalize", "mean": _number_list(step.mean), "std": _number_list(step.std)})
        elif isinstance(step, T.ToTensor) or name == "MaybeToTensor":
            out.append({"op": "to_tensor"})
        elif name in ("MaybeConvertMode", "_convert_to_rgb") or getattr(step, "__name__", "") == "_convert_to_rgb":
            out.append({"op": "rgb"})
        else:
            raise UserError(
                f"the model's image transform has a step ONNX export cannot describe: {name} "
                "(supported: Resize, CenterCrop, RGB conversion, ToTensor, Normalize, a Hugging Face processor)"
            )
    return {"kind": "torchvision", "steps": out}


class RGB:
    """PIL image -> RGB (picklable)."""

    def __call__(self, image: Any) -> Any:
        return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def build_transform(settings: dict[str, Any], folder: Path) -> Any:
    """The eval transform described by :func:`describe_transform` (a picklable callable: PIL -> tensor)."""
    from torchvision import transforms as T

    if settings.get("kind") == "hf_processor":
        from transformers import AutoImageProcessor

        from encoders.hf_vision import HFImageTransform

        return HFImageTransform(AutoImageProcessor.from_pretrained(folder / settings["folder"]))
    steps: list[Any] = []
    for step in settings.get("steps", []):
        op = step["op"]
        if op == "resize":
            size = step["size"]
            steps.append(
                T.Resize(
                    size,
                    interpolation=T.InterpolationMode(step["interpolation"]),
                    max_size=step.get("max_size"),
                    antialias=step.get("antialias", True),
                )
            )
        elif op == "center_crop":
            steps.append(T.CenterCrop(step["size"]))
        elif op == "normalize":
            steps.append(T.Normalize(step["mean"], step["std"]))
        elif op == "to_tensor":
            steps.append(T.ToTensor())
        elif op == "rgb":
            steps.append(RGB())
        else:
            raise UserError(f"{folder}: unknown image transform step '{op}' in model.json")
    return T.Compose(steps)
