"""Caption decoding over ONNX Runtime sessions with NumPy alone: greedy and beam search on the exported decoder.

The loop follows ``optimum``'s ``ORTModelForCausalLM`` and ``onnxruntime-genai``: the first graph reads the prompt
and the image conditioning and returns the key/value cache, each later step feeds one token and the cache back
(:mod:`multimodal.onnx.caption_decoder`). Scores and choices follow Hugging Face ``generate`` as the eager captioner
calls it: greedy takes the arg-max of the processed logits; beam search is transformers' vectorised beam search
(``2 x num_beams`` candidates a step, length penalty on finished beams, its early-stopping heuristic). The trimmed
vocabulary is the graphs' ``vocab_ids`` input: logits are computed for the training targets' ids only.

This module imports no torch, lightning, transformers or timm.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from multimodal.errors import UserError

NEG = np.float32(-1e9)  # transformers' "never pick" score in beam search


@dataclass(frozen=True)
class DecodingOptions:
    """The ``generate`` options this loop follows (the others are refused in one line)."""

    max_new_tokens: int = 24
    min_new_tokens: int = 0
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    trim_vocabulary: bool | None = None

    @classmethod
    def parse(cls, defaults: dict[str, Any], options: dict[str, Any]) -> DecodingOptions:
        """``options`` over the model's ``defaults``; ``do_sample`` / ``use_cache`` may only keep their meaning."""
        merged = {k: v for k, v in {**defaults, **options}.items() if v is not None or k == "trim_vocabulary"}
        if merged.pop("do_sample", False):
            raise UserError("do_sample: sampling is not available on ONNX Runtime; run the checkpoint for it")
        merged.pop("use_cache", None)
        known = {f.name for f in fields(cls)}
        if set(merged) - known:
            raise UserError(f"generation option(s) {sorted(set(merged) - known)} are not available on ONNX Runtime; "
                            f"choose from {', '.join(sorted(known))}")  # fmt: skip
        if int(merged.get("max_new_tokens", 1)) <= 0:
            raise UserError(f"max_new_tokens must be positive, not {merged['max_new_tokens']}")
        if merged.get("trim_vocabulary") not in (None, True, False):
            raise UserError(f"trim_vocabulary must be true or false, not {merged['trim_vocabulary']!r}")
        return cls(**merged)


@dataclass
class Decoded:
    """New token ids ``(B * num_return_sequences, L)`` (filled after ``[eos]``) and one score per sequence: the mean
    token log-probability up to the first ``[eos]`` (greedy) or the length-normalised beam score."""

    tokens: np.ndarray
    scores: list[float]


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32 (``-inf`` columns stay ``-inf``)."""
    top = x.max(-1, keepdims=True)
    return (x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))).astype(np.float32)


def top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Indices ``(B, k)`` of the ``k`` largest values of each row of ``x (B, N)``, largest first (ties: the lower
    index first)."""
    if 4 * k >= x.shape[-1]:
        return np.argsort(-x, axis=-1, kind="stable")[..., :k]
    part = np.argpartition(-x, k - 1, axis=-1)[..., :k]  # the k largest, unordered: O(N), not a full sort
    order = np.lexsort((part, -np.take_along_axis(x, part, -1)), axis=-1)
    return np.take_along_axis(part, order, -1)


class CaptionDecoder:
    """Greedy and beam-search decoding over the ``decoder_first`` / ``decoder_step`` sessions of an export.

    Args:
        first: session of ``decoder_first`` (anything with ``run(None, feed)`` and ``get_inputs()``).
        step: session of ``decoder_step``.
        settings: the export's ``decoding`` section: ``bos_id``, ``eos_id``, ``pad_id``, ``vocab_size``,
            ``caption_token_ids`` (or None), ``generation`` (the model's defaults) and ``kind`` (what the LM reads).
    """

    def __init__(self, first: Any, step: Any, settings: dict[str, Any]) -> None:
        self.first, self.step = first, step
        self.eos, self.pad = int(settings["eos_id"]), int(settings["pad_id"])
        self.vocab_size = int(settings["vocab_size"])
        ids = settings.get("caption_token_ids")
        self.caption_ids = None if ids is None else np.asarray(ids, dtype=np.int64)
        self.generation: dict[str, Any] = dict(settings.get("generation") or {})
        self.prefix = settings["kind"] == "prefix"
        self.first_names = [i.name for i in first.get_inputs()]
        self.step_names = [i.name for i in step.get_inputs()]
        self.present = [o.name for o in first.get_outputs() if o.name.startswith("present.")]

    @classmethod
    def from_folder(cls, folder: Any, info: dict[str, Any], threads: int = 1, int8: bool = False) -> CaptionDecoder:
        """The decoder of an export folder (its ``model.json`` as ``info``), on CPU sessions."""
        import onnxruntime as ort

        if "decoding" not in info or "decoder_first" not in info["graphs"]:
            raise UserError(f"{folder} holds no decoder graphs (an export written before them): export the "
                            "checkpoint again with `multimodal export-model` to caption on ONNX Runtime")  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        files = {g: info["graphs"][g]["int8_file" if int8 else "file"] for g in ("decoder_first", "decoder_step")}
        first, step = (ort.InferenceSession(f"{folder}/{files[g]}", options, providers=["CPUExecutionProvider"])
                       for g in ("decoder_first", "decoder_step"))  # fmt: skip
        return cls(first, step, info["decoding"])

    def vocabulary(self, trim: bool | None) -> np.ndarray:
        """The ids that may be written ``(K,)``: the training targets' unless ``trim`` is False (None: when known)."""
        if trim and self.caption_ids is None:
            raise UserError("trim_vocabulary: this export holds no training-target token ids; decode with it off")
        if trim is False or self.caption_ids is None:
            return np.arange(self.vocab_size, dtype=np.int64)
        return self.caption_ids

    # ------------------------------------------------------------------------------------------ the graphs
    def run_first(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits ``(B, K)`` and the cache (``past.*`` and ``cross.*``) after the prompt."""
        names = [o.name for o in self.first.get_outputs()]
        out = dict(zip(names, self.first.run(None, {n: feed[n] for n in self.first_names}), strict=True))
        cache = {n.replace("present.", "past.", 1): a for n, a in out.items() if n != "logits"}
        return out["logits"], cache

    def run_step(self, feed: dict[str, np.ndarray], cache: dict[str, np.ndarray]) -> np.ndarray:
        """Logits ``(B, K)`` of one token; ``cache``'s ``past.*`` become the presents."""
        arrays = {**feed, **cache}
        out = self.step.run(None, {n: arrays[n] for n in self.step_names})
        cache.update(zip((p.replace("present.", "past.", 1) for p in self.present), out[1:], strict=True))
        return out[0]

    # ------------------------------------------------------------------------------------------- decoding
    def generate(
        self, conditioning: dict[str, np.ndarray], prompt_ids: np.ndarray, prompt_mask: np.ndarray, **options: Any
    ) -> Decoded:
        """Captions' tokens for ``caption_vision``'s outputs ``conditioning`` and left-padded prompts ``(B, T)``,
        with ``options`` over the model's generation settings."""
        opts = DecodingOptions.parse(self.generation, options)
        beams = opts.num_beams
        if opts.num_return_sequences > beams:
            raise UserError(f"num_return_sequences ({opts.num_return_sequences}) must be <= num_beams ({beams})")
        feed = {k: np.repeat(v, beams, 0) for k, v in conditioning.items()}  # as generate expands its inputs
        feed |= {"input_ids": np.repeat(prompt_ids.astype(np.int64), beams, 0),
                 "attention_mask": np.repeat(prompt_mask.astype(np.int64), beams, 0),
                 "vocab_ids": self.vocabulary(opts.trim_vocabulary)}  # fmt: skip
        mask = feed["attention_mask"]
        history = feed["input_ids"]
        if self.prefix:  # placeholders before the prompt, as the eager captioner puts them
            width = feed["prefix_mask"].shape[1]
            mask = np.concatenate([feed["prefix_mask"].astype(np.int64), mask], 1)
            history = np.concatenate([np.full((history.shape[0], width), self.pad, np.int64), history], 1)
        search = _Greedy(self, opts) if beams == 1 else _Beams(self, opts, prompt_ids.shape[0])
        return search.run(feed, mask, history)

    def process(self, scores: np.ndarray, history: np.ndarray, new: int, vocab: np.ndarray,
                opts: DecodingOptions) -> np.ndarray:  # fmt: skip
        """The logits processors ``generate`` adds for these options, in place: no ``[eos]`` before
        ``min_new_tokens``, no repeated n-gram of ``no_repeat_ngram_size`` (over the prompt and the new tokens)."""
        if new < opts.min_new_tokens:
            scores[:, vocab == self.eos] = -np.inf
        n = opts.no_repeat_ngram_size
        if n and history.shape[1] + 1 >= n:
            column = {int(t): j for j, t in enumerate(vocab)}
            for row, seq in enumerate(history.tolist()):
                tail = tuple(seq[len(seq) - n + 1 :]) if n > 1 else ()
                banned = {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i : i + n - 1]) == tail}
                cols = [column[t] for t in banned if t in column]
                scores[row, cols] = -np.inf
        return scores


class _Greedy:
    """Arg-max decoding; finished rows get ``[pad]`` (generate's greedy search)."""

    def __init__(self, decoder: CaptionDecoder, opts: DecodingOptions) -> None:
        self.decoder, self.opts = decoder, opts

    def run(self, feed: dict[str, np.ndarray], mask: np.ndarray, history: np.ndarray) -> Decoded:
        d, vocab = self.decoder, feed["vocab_ids"]
        logits, cache = d.run_first(feed)
        rows = np.arange(logits.shape[0])
        open_ = np.ones(logits.shape[0], dtype=bool)
        tokens, logps = [], []
        for new in range(self.opts.max_new_tokens):
            scores = d.process(logits.astype(np.float32), history, new, vocab, self.opts)
            pick = scores.argmax(1)
            logps.append(log_softmax(scores)[rows, pick])
            token = np.where(open_, vocab[pick], d.pad)
            tokens.append(token)
            history = np.concatenate([history, token[:, None]], 1)
            open_ &= token != d.eos
            if not open_.any() or new + 1 == self.opts.max_new_tokens:
                break
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], 1)
            step = {k: v for k, v in feed.items() if k not in ("input_ids", "attention_mask")}
            logits = d.run_step({**step, "input_ids": token[:, None], "attention_mask": mask}, cache)
        seqs, logp = np.stack(tokens, 1), np.stack(logps, 1)
        ended = np.cumsum(seqs == d.eos, 1)
        keep = (ended == 0) | ((ended == 1) & (seqs == d.eos))  # up to and including the first eos
        mean = np.where(keep, logp, 0).sum(1, dtype=np.float32) / np.maximum(keep.sum(1), 1).astype(np.float32)
        return Decoded(seqs, [round(float(s), 6) for s in mean])


class _Beams:
    """transformers' vectorised beam search (``GenerationMixin._beam_search``) on NumPy arrays ``(B, beams, ...)``."""

    def __init__(self, decoder: CaptionDecoder, opts: DecodingOptions, items: int) -> None:
        self.d, self.opts, self.b, self.n = decoder, opts, items, opts.num_beams
        fill = decoder.pad or decoder.eos  # generate fills with pad, or eos when pad is id 0
        length = opts.max_new_tokens
        self.run_seq = np.full((items, self.n, length), fill, np.int64)
        self.run_scores = np.zeros((items, self.n), np.float32)
        self.run_scores[:, 1:] = NEG
        self.fin_seq, self.fin_scores = self.run_seq.copy(), np.full((items, self.n), NEG, np.float32)
        self.fin_done, self.fin_len = np.zeros((items, self.n), bool), np.zeros((items, self.n), np.int64)
        self.open = np.ones((items, 1), bool)  # the early-stopping heuristic still unsatisfied

    def run(self, feed: dict[str, np.ndarray], mask: np.ndarray, history: np.ndarray) -> Decoded:
        d, vocab, b, n = self.d, feed["vocab_ids"], self.b, self.n
        logits, cache = d.run_first(feed)
        for new in range(self.opts.max_new_tokens):
            seen = np.concatenate([history, self.run_seq.reshape(b * n, -1)[:, :new]], 1)
            logp = d.process(log_softmax(logits.astype(np.float32)), seen, new, vocab, self.opts)
            total = (logp.reshape(b, n, -1) + self.run_scores[:, :, None]).reshape(b, -1)  # (B, beams * K)
            best = top_k(total, 2 * n)
            top_lp = np.take_along_axis(total, best, 1)
            beam, token = best // logp.shape[1], vocab[best % logp.shape[1]]
            top_seq = np.take_along_axis(self.run_seq, beam[:, :, None], 1)
            top_seq[:, :, new] = token
            hits = (token == d.eos) | (new + 1 >= self.opts.max_new_tokens)
            source = self.keep_running(top_lp, top_seq, beam, hits)
            self.keep_finished(top_lp, top_seq, hits, new)
            self.open &= self.improvable(new + 1)
            if not self.open.any() or (self.fin_done.all() and self.opts.early_stopping is True) or hits.all():
                break
            cache = {k: v if k.startswith("cross.") else v[source] for k, v in cache.items()}
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], 1)
            step = {k: v for k, v in feed.items() if k not in ("input_ids", "attention_mask")}
            tokens = self.run_seq[:, :, new].reshape(-1, 1)
            logits = d.run_step({**step, "input_ids": tokens, "attention_mask": mask}, cache)
        k = self.opts.num_return_sequences
        length = int(self.fin_len[:, :k].max())
        return Decoded(self.fin_seq[:, :k, :length].reshape(b * k, length),
                       [round(float(s), 6) for s in self.fin_scores[:, :k].reshape(-1)])  # fmt: skip

    def keep_running(self, top_lp: np.ndarray, top_seq: np.ndarray, beam: np.ndarray, hits: np.ndarray) -> np.ndarray:
        """The best ``beams`` unfinished candidates continue; returns the cache row ``(B * beams,)`` each extends."""
        scores = top_lp + hits.astype(np.float32) * NEG
        chosen = top_k(scores, self.n)
        self.run_seq = np.take_along_axis(top_seq, chosen[:, :, None], 1)
        self.run_scores = np.take_along_axis(scores, chosen, 1)
        rows = np.take_along_axis(beam, chosen, 1) + np.arange(self.b)[:, None] * self.n
        return rows.reshape(-1)

    def keep_finished(self, top_lp: np.ndarray, top_seq: np.ndarray, hits: np.ndarray, new: int) -> None:
        """Candidates among the first ``beams`` that just ended join the finished ones if they score higher
        (length-normalised: divided by ``new tokens ** length_penalty``)."""
        just = hits & (np.arange(2 * self.n) < self.n)[None, :]
        scores = top_lp / np.float32((new + 1) ** self.opts.length_penalty)
        full = self.fin_done.all(-1, keepdims=True) & (self.opts.early_stopping is True)
        scores = scores + full.astype(np.float32) * NEG + (~self.open).astype(np.float32) * NEG
        scores = scores + (~just).astype(np.float32) * NEG
        merged = np.concatenate([self.fin_scores, scores], 1)
        chosen = top_k(merged, self.n)
        lengths = np.full(just.shape, new + 1, np.int64)
        self.fin_seq = np.take_along_axis(np.concatenate([self.fin_seq, top_seq], 1), chosen[:, :, None], 1)
        self.fin_scores = np.take_along_axis(merged, chosen, 1)
        self.fin_done = np.take_along_axis(np.concatenate([self.fin_done, just], 1), chosen, 1)
        self.fin_len = np.take_along_axis(np.concatenate([self.fin_len, lengths], 1), chosen, 1)

    def improvable(self, generated: int) -> np.ndarray:
        """transformers' early-stopping heuristic: can the best running beam still beat the worst finished one?"""
        lp = self.opts.length_penalty
        length = self.opts.max_new_tokens if self.opts.early_stopping == "never" and lp > 0 else generated
        best = self.run_scores[:, :1] / np.float32(length**lp)
        worst = np.where(self.fin_done, self.fin_scores.min(1, keepdims=True), NEG)
        return (best > worst).any(-1, keepdims=True)
