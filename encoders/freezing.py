"""One switch for every tower: frozen, fully trained, trained in its last N blocks only, or adapted by peft."""

from __future__ import annotations

from typing import Any

from torch import nn

# True / False / N last blocks / {peft method: {options}} (see encoders.adapters)
Trainable = bool | int | dict[str, dict[str, Any] | None]


def block_list(module: nn.Module) -> nn.Module | None:
    """The longest stack of repeated blocks in ``module`` (a ``ModuleList`` or ``Sequential``).

    Transformers keep their layers in one such list (``encoder.layer``, ``h``, ``blocks``, ``resblocks``);
    CNNs in timm keep their stages in ``blocks``. Ties go to the first one found, which is the outermost.
    """
    best: nn.Module | None = None
    for child in module.modules():
        if isinstance(child, nn.ModuleList | nn.Sequential) and len(child) > (len(best) if best is not None else 1):
            best = child
    return best


def set_trainable(module: nn.Module, trainable: Trainable) -> None:
    """Freeze or unfreeze the parameters of ``module``.

    Args:
        module: the tower.
        trainable: True trains everything, False freezes everything, an int N > 0 trains only the last N
            blocks of the longest block stack plus every parameter registered after it (final norms, heads);
            0 is the same as False; ``{method: {options}}`` freezes the tower and adds peft adapters
            (:mod:`encoders.adapters`), which train.
    """
    if isinstance(trainable, dict):
        from encoders.adapters import add_adapters

        add_adapters(module, trainable)
        freeze_norm_statistics(module)
        return
    if isinstance(trainable, bool) or trainable <= 0:
        module.requires_grad_(bool(trainable))
        freeze_norm_statistics(module)
        return
    blocks = block_list(module)
    if blocks is None:
        raise ValueError(f"cannot train the last {trainable} blocks of {type(module).__name__}: it has no block stack")
    module.requires_grad_(False)
    last = list(blocks)[-trainable:]
    for block in last:
        block.requires_grad_(True)
    # Parameters that come after the block stack (final norm, projection) belong to the trained tail.
    params = list(module.parameters())
    in_blocks = {id(p) for p in blocks.parameters()}
    last_block_param = max(i for i, p in enumerate(params) if id(p) in in_blocks)
    for p in params[last_block_param + 1 :]:
        p.requires_grad_(True)
    freeze_norm_statistics(module)


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def freeze_norm_statistics(module: nn.Module) -> None:
    """Give every batch-norm layer of ``module`` the mode ``module.training and <its parameters train>``.

    In training mode a batch norm normalises with batch statistics and updates its running statistics, so a
    tower frozen by ``requires_grad`` alone would still change in training and compute other features in
    training than at inference. After this, frozen batch norms use (and keep) their running statistics and
    those of trained blocks train as usual. Batch norms without parameters follow ``module``. Called by
    :func:`set_trainable` and by the towers' ``train()``; Lightning keeps the modes it finds (it never calls
    ``train()`` on the model), so setting them when a tower is frozen is what makes ``fit`` respect them.
    """
    for layer in module.modules():
        if isinstance(layer, BATCH_NORMS):
            params = list(layer.parameters(recurse=False))
            layer.training = module.training and (not params or any(p.requires_grad for p in params))


def count_trainable(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
