"""Caption quality's data and models: the split's (id, photo, target text) items, the frozen EfficientNet-Lite0
features every method reads (computed once, optionally kept between runs), our
:class:`multimodal.captioning.captioner.ProductCaptioner` with each conditioning (``MODES``) and the Hugging Face
peer, a ``VisionEncoderDecoderModel`` over the same MiniLM decoder; both train their new layers at ``lr`` and the
pretrained LM at ``lr * lm_lr_scale``."""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.common import say
from encoders.types import Features
from multimodal.captioning.captioner import RETRIEVED

PEER = "hf_vision_encoder_decoder"
MODES = {
    "early": "PrefixConditioning",
    "cross_attention": "CrossAttentionConditioning",
    "late": "LateConditioning",
}
COPYING = ("nearest_title", "consensus_title")  # methods that copy a training title, no model trained
SIMILAR = RETRIEVED  # the prompt column holding the neighbours' titles (--retrieval)
# --compare decodings every method (the peer too) can be scored with, next to greedy decoding
# consensus: 8 beam candidates, the one closest in CIDEr-D to the 5 nearest training photos' titles (ProductCaptioner's
# rerank option; the peer's candidates get the same reranker in this benchmark)
DECODING: dict[str, dict[str, Any]] = {
    "no_repeat": {"no_repeat_ngram_size": 3},
    "beams4": {"num_beams": 4},
    "consensus": {"rerank": True},
}


def optimizer(model: nn.Module, pretrained: set[int], args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW: new parameters at ``lr``, pretrained LM parameters at ``lr * lm_lr_scale`` (same for every method)."""
    params = [p for p in model.parameters() if p.requires_grad]
    new = [p for p in params if id(p) not in pretrained]
    old = [p for p in params if id(p) in pretrained]
    groups = [{"params": new, "lr": args.lr}, {"params": old, "lr": args.lr * args.lm_lr_scale}]
    return torch.optim.AdamW(groups, weight_decay=0.01)


def build_ours(mode: str, vision_dim: int, args: argparse.Namespace) -> tuple[Any, set[int]]:
    from encoders.language_model import MiniLMLanguageModel
    from fusion import conditioning
    from multimodal.captioning.captioner import ProductCaptioner

    adapter = json.loads(args.lm_adapter) if getattr(args, "lm_adapter", "") else True
    lm = MiniLMLanguageModel(max_length=args.max_length, trainable=adapter, head_init=args.head_init)
    # --retrieval: the captioner's own retrieval prompt (room for the titles, closing token); the benchmark fills
    # its neighbour-title column from the same CaptionMemory the captioner builds in fit
    retrieval = {"k": args.retrieval, "tokens": args.retrieval_tokens} if args.retrieval else None
    vision = _NoVision(vision_dim)
    options = json.loads(args.conditioning) if args.conditioning and mode != "late" else {}
    model = ProductCaptioner(vision, lm, partial(getattr(conditioning, MODES[mode]), dropout=0.1, **options),
                             generation={"max_new_tokens": args.max_new_tokens, "num_beams": 1},
                             word_dropout=args.word_dropout, lm_warmup_steps=args.lm_warmup_steps,
                             label_smoothing=args.label_smoothing, retrieval=retrieval,
                             self_critical=json.loads(args.self_critical) if args.self_critical else None)  # fmt: skip
    # New cross-attention layers and adapters train at lr, as new layers; the LM's own weights at lr * lm_lr_scale.
    return model, {id(p) for p in model.lm.pretrained_parameters()}


class _NoVision(nn.Module):
    """Placeholder vision tower: the benchmark feeds cached features, the captioner never calls it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.output_dim = dim

    def image_transform(self, train: bool) -> Any:
        raise NotImplementedError


def build_peer(vision_dim: int, args: argparse.Namespace) -> tuple[Any, set[int]]:
    """VisionEncoderDecoderModel: ViT-shaped adapter encoder (width = vision features) + MiniLM decoder."""
    from transformers import AutoModelForCausalLM, VisionEncoderDecoderModel, ViTConfig, ViTModel

    from encoders.pretrained import minilm_path

    decoder = AutoModelForCausalLM.from_pretrained(str(minilm_path()), is_decoder=True, add_cross_attention=True)
    shape = {
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "intermediate_size": 8,
        "image_size": 32,
        "patch_size": 32,
    }
    encoder = ViTModel(ViTConfig(hidden_size=vision_dim, **shape), add_pooling_layer=False)
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    tok = minilm_tokenizer()
    model.config.decoder_start_token_id = tok.cls_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.sep_token_id
    model.generation_config.decoder_start_token_id = tok.cls_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.encoder.requires_grad_(False)
    pretrained = {id(p) for n, p in model.decoder.named_parameters() if "crossattention" not in n}
    return model, pretrained


def minilm_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from encoders.pretrained import minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()))


def peer_batch(texts: list[str], args: argparse.Namespace) -> Tensor:
    """VED labels: target tokens + [SEP], padding -100 (VED shifts them right after [CLS] itself)."""
    tok = minilm_tokenizer()
    rows = [tok(t, add_special_tokens=False)["input_ids"][: args.max_length - 2] + [tok.sep_token_id] for t in texts]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-100] * (width - len(r)) for r in rows])


def peer_prompt_text(args: argparse.Namespace) -> Any:
    """With --retrieval, the peer's decoder reads the same ``[CLS] neighbour titles target [SEP]`` sequences as ours."""
    from multimodal.captioning.captioner import RETRIEVAL_PROMPT_END, CaptionText

    tok = minilm_tokenizer()
    return CaptionText(tok, args.target, [SIMILAR], "", args.max_length + args.retrieval_tokens, tok.cls_token_id,
                       tok.sep_token_id, tok.pad_token_id, prompt_length=args.retrieval_tokens,
                       prompt_end=RETRIEVAL_PROMPT_END)  # fmt: skip


def load_split(args: argparse.Namespace) -> dict[str, list[tuple[str, Path, str]]]:
    """(id, image path, target text) per split, with the data module's deterministic hash split."""
    from multimodal.data.datamodule import ProductDataModule

    root = Path(args.data)
    dm = ProductDataModule(str(root / "metadata.csv"), str(root / "images"), text_columns=[args.target],
                           on_bad_sample="skip", split_column=None)  # fmt: skip
    out = {}
    for split, records in dm.splits.items():
        out[split] = [(r.id, root / "images" / str(r.image), str(r.texts[args.target])) for r in records
                      if r.image is not None and r.texts[args.target]]  # fmt: skip
    if args.max_train:
        out["train"] = out["train"][: args.max_train]
    if args.max_test:
        out["val"], out["test"] = out["val"][: args.max_test], out["test"][: args.max_test]
    return out


@torch.no_grad()
def image_features(items: list[tuple[str, Path, str]], vision: Any, batch_size: int = 64) -> Features:
    """Frozen vision features of every item: tokens ``(N, T, D)``, pooled ``(N, D)``."""
    from multimodal.data.images import load_image

    transform = vision.image_transform(False)
    tokens, pooled = [], []
    for i in range(0, len(items), batch_size):
        px = torch.stack([transform(load_image(p)) for _, p, _ in items[i : i + batch_size]])
        f = vision(px)
        tokens.append(f.tokens)
        pooled.append(f.pooled)
    t = torch.cat(tokens)
    return Features(tokens=t, mask=torch.ones(t.shape[:2], dtype=torch.bool), pooled=torch.cat(pooled))


def cached_features(
    args: argparse.Namespace, splits: dict[str, list[tuple[str, Path, str]]], names: tuple[str, ...] = ("train", "test")
) -> dict[str, Features]:
    """Frozen EfficientNet-Lite0 features of the ``names`` splits, read from ``--features_cache`` when it holds them
    for this data, image size and train / test split, computed (and added to the cache) otherwise."""
    from encoders.pretrained import EfficientNetLiteEncoder

    cache = Path(args.features_cache) if args.features_cache else None
    key = [args.data, args.image_size, [i for i, _, _ in splits["train"]], [i for i, _, _ in splits["test"]]]
    saved = torch.load(cache, weights_only=True) if cache and cache.is_file() else None
    saved = saved if saved is not None and saved["key"] == key else {"key": key}
    feats, vision = {}, None
    for split in names:
        if split in saved:
            feats[split] = Features(**saved[split])
            continue
        vision = vision or EfficientNetLiteEncoder(0, image_size=args.image_size, trainable=False).eval()
        feats[split] = image_features(splits[split], vision)
        saved[split] = vars(feats[split])
        say(f"features {split}: {tuple(feats[split].tokens.shape)}")
    if vision is None:
        say(f"features from {cache}")
    elif cache:
        torch.save(saved, cache)
    return feats


def take(features: Features, index: Tensor) -> Features:
    return features.take(index)
