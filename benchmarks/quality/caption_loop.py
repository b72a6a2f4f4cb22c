"""Caption quality's training and captioning loops: every method trained with the same steps, order and optimizer
(what ``ProductCaptioner``'s Lightning hooks do in fit is called here by hand), then captions the test photos;
:func:`run_method` trains, captions and scores one method under one seed (and its ``--compare`` variants); the
methods that copy a training title train nothing."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import say, seed_all
from benchmarks.quality.caption_models import (
    COPYING,
    DECODING,
    PEER,
    SIMILAR,
    build_ours,
    build_peer,
    minilm_tokenizer,
    optimizer,
    peer_batch,
    peer_prompt_text,
    take,
)
from encoders.types import Features
from multimodal.captioning.metrics import caption_scores


def train(
    method: str, feats: Features, texts: list[str], args: argparse.Namespace, prompts: list[str] | None = None
) -> tuple[Any, float, int]:
    """Train ``method``; ``prompts`` (one per training text, --retrieval) go before each target."""
    seed_all(args.seed)
    vision_dim = feats.tokens.shape[-1]
    peer = method == PEER
    model, pretrained = build_peer(vision_dim, args) if peer else build_ours(method, vision_dim, args)
    opt = optimizer(model, pretrained, args)
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
            idx = order[i : i + args.batch_size].tolist()
            columns = {
                args.target: [texts[j] for j in idx],
                **({SIMILAR: [prompts[j] for j in idx]} if prompts else {}),
            }
            loss, reward = _loss(model, peer, critical, take(feats, order[i : i + args.batch_size]), columns, text_fn,
                                 args)  # fmt: skip
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


def _loss(
    model: Any, peer: bool, critical: bool, f: Features, columns: dict[str, list[str]], text_fn: Any,
    args: argparse.Namespace,
) -> tuple[torch.Tensor, Any]:  # fmt: skip
    """One batch's loss (and the self-critical reward, else None): the peer's, ours teacher-forced or self-critical."""
    from transformers.modeling_outputs import BaseModelOutput

    if peer and text_fn is None:
        labels = peer_batch(columns[args.target], args)
        return model(encoder_outputs=BaseModelOutput(last_hidden_state=f.tokens), labels=labels).loss, None
    if peer:  # given decoder inputs, VED scores labels position by position: shift them by one
        enc = text_fn(columns)
        labels = torch.cat([enc["caption_labels"][:, 1:], enc["caption_labels"][:, :1].fill_(-100)], 1)
        out = model(encoder_outputs=BaseModelOutput(last_hidden_state=f.tokens), decoder_input_ids=enc["input_ids"],
                    decoder_attention_mask=enc["attention_mask"], labels=labels)  # fmt: skip
        return out.loss, None
    if critical:
        return model.self_critical_loss(f, text_fn(columns))
    enc = text_fn(columns)
    ids = model.drop_words(enc["input_ids"], enc["caption_labels"])  # unchanged when word_dropout is 0
    return model.loss(model.logits(f, ids, enc["attention_mask"]), enc["caption_labels"]), None


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
    tok = minilm_tokenizer()
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
    consensus, tok = CiderConsensus(memory.titles), minilm_tokenizer()
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
        return _copy_method(method, memory, feats["test"], refs)
    prompts = retrieved or {}
    model, seconds, steps = train(method, feats["train"], train_texts, args, prompts.get("train"))
    ours = method != PEER
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


def _copy_method(method: str, memory: Any, feats: Features, refs: list[str]) -> dict[str, Any]:
    """A method that copies a training title (:func:`copy_titles`), scored as the trained ones are."""
    start = time.perf_counter()
    preds = copy_titles(method, memory, feats)
    scores = caption_scores(preds, refs)
    say(f"{method}: BLEU-4 {scores['bleu4']:.4f}  CIDEr {scores['cider']:.4f}  exact {scores['exact']:.3f}")
    examples = [{"generated": p, "reference": r} for p, r in list(zip(preds, refs, strict=True))[:5]]
    return {**scores, "train_seconds": 0.0, "steps": 0, "examples": examples,
            "caption_seconds": round(time.perf_counter() - start, 1), "distinct_captions": len(set(preds)),
            "empty_captions": sum(not p for p in preds)}  # fmt: skip
