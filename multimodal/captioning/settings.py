"""Typed settings of a captioner's optional behaviours, parsed from their YAML / API values with one-line errors.

Each setting is given in a config as null / false (off), true (the defaults) or a mapping over the defaults' keys;
``parse`` turns that value into a frozen dataclass (or None) so the code that uses it reads fields, not keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from multimodal.errors import UserError

DEFAULT_GENERATION: dict[str, Any] = {"max_new_tokens": 24, "num_beams": 1}

S = TypeVar("S")


def _mapping(cls: type[S], value: Any, name: str, example: str) -> dict[str, Any] | None:
    """None / False (off), True (the defaults of ``cls``), or a mapping over its fields merged over the defaults;
    anything else is a one-line error naming the keys."""
    if value is None or value is False:
        return None
    defaults = asdict(cls())  # type: ignore[call-overload]
    if value is True:
        return defaults
    if not isinstance(value, dict) or set(value) - set(defaults):
        *first, last = defaults
        raise UserError(f"{name}={value!r}: give true, false or a mapping with keys {', '.join(first)} and {last}, "
                        f"e.g. {example}")  # fmt: skip
    return {**defaults, **value}


def _check_whole(values: dict[str, Any], name: str, lowest: dict[str, int]) -> None:
    for key, low in lowest.items():
        if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < low:
            raise UserError(f"{name}.{key}={values[key]!r}: needs a whole number >= {low}")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


@dataclass(frozen=True)
class RetrievalSettings:
    """Retrieval-augmented prompts: the titles of the ``k`` most similar catalogue photos, in up to ``tokens``
    extra prompt tokens."""

    k: int = 3
    tokens: int = 48

    @classmethod
    def parse(cls, value: Any) -> RetrievalSettings | None:
        """``model.retrieval``: None, or a mapping of ``k`` and ``tokens`` (whole numbers >= 1) over the defaults."""
        if value is None:
            return None
        keys = [f.name for f in fields(cls)]
        if not isinstance(value, dict) or set(value) - set(keys):
            raise UserError(f"model.retrieval={value!r}: give null or a mapping with keys k and tokens, e.g. {{k: 3}}")
        merged = {**asdict(cls()), **value}
        _check_whole(merged, "model.retrieval", dict.fromkeys(merged, 1))
        return cls(**merged)


@dataclass(frozen=True)
class RerankSettings:
    """Consensus reranking: ``candidates`` beam captions, judged against the titles of the ``k`` most similar
    catalogue photos, plus ``weight`` times the beam score."""

    k: int = 5
    candidates: int = 8
    weight: float = 0.0

    @classmethod
    def parse(cls, value: Any, name: str = "rerank") -> RerankSettings | None:
        """None / False (off), True (the defaults) or a mapping over them: ``k`` and ``candidates`` (whole numbers
        >= 1), ``weight`` (a number >= 0)."""
        merged = _mapping(cls, value, name, "{k: 5}")
        if merged is None:
            return None
        _check_whole(merged, name, {"k": 1, "candidates": 1})
        if not _is_number(merged["weight"]) or not merged["weight"] >= 0:
            raise UserError(f"{name}.weight={merged['weight']!r}: needs a number >= 0")
        return cls(k=merged["k"], candidates=merged["candidates"], weight=float(merged["weight"]))

    @classmethod
    def for_call(cls, value: Any, model: RerankSettings | None) -> RerankSettings | None:
        """The reranking of one caption call: the model's for None, off for False, the model's (or the defaults)
        for True, a mapping over the model's (or the defaults)."""
        if value is None:
            return model
        if isinstance(value, dict):
            return cls.parse({**(asdict(model) if model else {}), **value})
        return cls.parse(asdict(model or cls()) if value is True else value)


@dataclass(frozen=True)
class SelfCriticalSettings:
    """Self-critical training from epoch ``start_epoch`` (0-based), ``samples`` captions sampled per photo, the
    learning rates multiplied by ``lr_scale`` when it starts."""

    start_epoch: int = 0
    samples: int = 5
    lr_scale: float = 0.1

    @classmethod
    def parse(cls, value: Any) -> SelfCriticalSettings | None:
        """``model.self_critical``: None / False (off), True (the defaults), or a mapping over them: ``start_epoch``
        (whole number >= 0), ``samples`` (whole number >= 2), ``lr_scale`` (a number > 0)."""
        name = "model.self_critical"
        merged = _mapping(cls, value, name, "{start_epoch: 2}")
        if merged is None:
            return None
        _check_whole(merged, name, {"start_epoch": 0, "samples": 2})
        scale = merged["lr_scale"]
        if not _is_number(scale) or not scale > 0:
            raise UserError(f"{name}.lr_scale={scale!r}: needs a number > 0")
        return cls(start_epoch=merged["start_epoch"], samples=merged["samples"], lr_scale=float(scale))


def check_trim_vocabulary(value: Any) -> None:
    """A one-line error unless ``value`` is None, True or False (the ``trim_vocabulary`` generation option)."""
    if value not in (None, True, False):
        raise UserError(f"trim_vocabulary must be true or false, not {value!r}")


def check_prompt_length(value: Any) -> int | None:
    """``model.prompt_length``: None or a whole number >= 0."""
    if value is not None and (not isinstance(value, int) or value < 0):
        raise UserError(f"model.prompt_length={value!r}: needs a whole number >= 0 (or null)")
    return value


# The defaults as plain mappings, for programs that read them by key.
RETRIEVAL_DEFAULTS: dict[str, Any] = asdict(RetrievalSettings())
RERANK_DEFAULTS: dict[str, Any] = asdict(RerankSettings())
SELF_CRITICAL_DEFAULTS: dict[str, Any] = asdict(SelfCriticalSettings())


def check_generation(options: dict[str, Any]) -> dict[str, Any]:
    """``generate`` options of a caption job, with a one-line error for values that cannot work."""
    for key in ("max_new_tokens", "num_beams"):
        if key in options and int(options[key]) <= 0:
            raise UserError(f"{key} must be positive, not {options[key]}")
    check_trim_vocabulary(options.get("trim_vocabulary"))
    RerankSettings.parse(options.get("rerank"))
    if int(options.get("num_return_sequences", 1)) != 1:
        raise UserError("num_return_sequences must be 1 for captioning (one caption per input)")
    return options
