"""Parameter-efficient fine-tuning through the ``peft`` library: adapters injected into a tower, merged for inference.

A tower's ``trainable`` may name a peft method instead of True / False / N::

    trainable: {lora: {r: 8, alpha: 16, target_modules: [query, value]}}
    trainable: {dora: {r: 8}}                        # LoRA with weight decomposition (peft's use_dora)
    trainable: {ia3: {target_modules: [query, value, output.dense], feedforward_modules: [output.dense]}}

The key is a peft method (``lora``, ``dora``, ``ia3``, ``loha``, ``lokr``...), the value the options of its peft
config (``alpha`` and ``dropout`` are short for LoRA's ``lora_alpha`` and ``lora_dropout``). ``target_modules``
defaults to ``all-linear`` (every linear layer but a language model's output layer); CNN towers name their
convolutions instead (timm EfficientNet's 1x1 convolutions: ``[conv_pw, conv_pwl]``). The tower's own weights are
frozen (its batch norms keep their statistics); only the adapters train. They live in the tower's state dict, so a
checkpoint holds them; :func:`merge_adapters` folds them into the weights they adapt (inference, ONNX export).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from encoders.errors import ConfigError

# Short names of the options every LoRA-family config spells with a prefix.
ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}


def adapter_config(spec: dict[str, Any]) -> Any:
    """The peft config for ``{method: {options}}`` (see the module docstring); a ConfigError names a bad key."""
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if len(spec) != 1:
        raise ConfigError(f"trainable: give one adapter method as {{method: {{options}}}}, not {sorted(spec)}")
    method, options = next(iter(spec.items()))
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"trainable.{method}: the options must be a mapping, not {options!r}")
    options = dict(options or {})
    name = str(method).lower()
    if name == "dora":
        name, options = "lora", {**options, "use_dora": True}
    methods = sorted(t.value.lower() for t in PEFT_TYPE_TO_CONFIG_MAPPING)
    try:
        config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(name.upper())]
    except (KeyError, ValueError):
        raise ConfigError(
            f"trainable: unknown adapter method '{method}' (peft has: dora, {', '.join(methods)})"
        ) from None
    fields = set(getattr(config_cls, "__dataclass_fields__", {}))
    options = {ALIASES.get(k, k) if ALIASES.get(k) in fields else k: v for k, v in options.items()}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"trainable.{method}: unknown option(s) {unknown} for peft's {config_cls.__name__}")
    if "target_modules" in fields and options.get("target_modules") is None:
        options["target_modules"] = "all-linear"
    return config_cls(**options)


def add_adapters(module: nn.Module, spec: dict[str, Any]) -> None:
    """Inject the adapters of ``spec`` into ``module`` in place; only they stay trainable."""
    from peft import inject_adapter_in_model

    if has_adapters(module):
        raise ConfigError(f"{type(module).__name__} already has adapters")
    config = adapter_config(spec)
    try:
        inject_adapter_in_model(config, module)
    except ValueError as err:  # e.g. target modules not found in the tower
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"trainable {spec}: peft cannot adapt {type(module).__name__}: {first}") from None
    found = adapter_parameters(module)
    if not found:
        raise ConfigError(f"trainable {spec}: no adapter was added to {type(module).__name__}")
    for p in module.parameters():
        p.requires_grad_(False)
    for p in found:
        p.requires_grad_(True)


def tuner_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every peft adapter layer in ``module``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


def has_adapters(module: nn.Module) -> bool:
    return bool(tuner_layers(module))


def adapter_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapters' own parameters (not the wrapped layers' weights)."""
    out: list[nn.Parameter] = []
    for _, layer in tuner_layers(module):
        base = {id(p) for p in layer.get_base_layer().parameters()}  # type: ignore[operator]
        out += [p for p in layer.parameters() if id(p) not in base]
    return out


def base_layer_names(module: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` (weights named as in the plain module) renamed for ``module`` with adapters: a wrapped layer's
    ``<name>.weight`` is ``<name>.base_layer.weight`` there. Pretrained weights loaded after adapters use this."""
    wrapped = {name for name, _ in tuner_layers(module)}
    if not wrapped:
        return state
    out = {}
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        out[f"{owner}.base_layer.{leaf}" if owner in wrapped else key] = value
    return out


def adapter_state_names(module: nn.Module) -> set[str]:
    """State-dict names of the adapters' own parameters in ``module``."""
    ids = {id(p) for p in adapter_parameters(module)}
    return {n for n, p in module.named_parameters() if id(p) in ids}


def merge_adapters(module: nn.Module) -> int:
    """Fold every adapter of ``module`` into the layer it wraps and put that plain layer back (in place): the same
    outputs (to rounding) with the tower's original layers and cost. Returns how many layers were merged."""
    layers = tuner_layers(module)
    for name, layer in layers:
        layer.merge()  # type: ignore[operator]
        parent_name, _, attr = name.rpartition(".")
        base = layer.get_base_layer()  # type: ignore[operator]
        base.requires_grad_(False)
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, base)
    return len(layers)
