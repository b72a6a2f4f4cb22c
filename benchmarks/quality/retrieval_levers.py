"""Retrieval quality's training levers (docs/search.md, section 1) as named presets, each trained as a variant of
every ``--variants`` retriever (``fused + views``), same seeds, in the same tables as the retriever without it:

- ``views``: with chance ``--view-probability`` a training query is a view of its product: ``--view-title-words``
  MIN MAX of its title's words, or a phrase of its ``--view-columns`` values ("women blue jeans");
- ``multi_positive``: ``views``, and every product with the attribute values a view states is one of its positives
  (the lever needs views; compare it with ``views`` as well as with the retriever without levers);
- ``hard_negatives``: batches gather look-alikes (``--hard-negative-columns SAME DIFFER``);
- ``matryoshka``: the ``--matryoshka-dims`` prefixes of the vectors are trained to work alone;
- ``text_skip``: a fused product vector keeps its text's own direction in the query space (fused retrievers only);
- ``all``: the five together; levers joined by ``+`` (``multi_positive+text_skip``) are trained together.

A preset is merged over ``--retriever-args`` (the keyword arguments of ``ProductRetriever(...)`` every variant
gets). The benchmark trains on cached features without the data module, so it applies the levers the data module
would (views drawn per step, the hard-negative order): :mod:`benchmarks.quality.retrieval_lever_batches`.
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Mapping
from typing import Any

from benchmarks.harness import Option
from multimodal.data.records import ProductRecord
from multimodal.errors import UserError
from multimodal.search.hard_negatives import HardNegatives
from multimodal.search.losses import matryoshka_widths
from multimodal.search.query_views import QueryViews, product_views
from multimodal.search.retriever import ProductRetriever

LEVERS = ("views", "multi_positive", "hard_negatives", "matryoshka", "text_skip", "all")
EMBED_DIM = 256  # the retrievers' width unless --retriever-args sets embed_dim
# ProductRetriever arguments the benchmark builds itself (objects, not JSON)
BUILT = {"vision", "text", "product", "fusion", "reranker", "optimizer", "scheduler"}
OPTIONS = {
    "--levers": Option([], f"training levers ({', '.join(LEVERS)}), each trained as its own variant of every "
                       "--variants retriever ('fused + views'; 'all': the five together; 'a+b': those together), "
                       "same seeds; given alone: none", nargs="*"),
    "--lever-bases": Option([], "the --variants retrievers the levers vary (default: every one)",
                            choices=["image-only", "fused"], nargs="*"),
    "--view-columns": Option(["gender", "baseColour", "articleType"], "views lever: the text columns of a view's "
                             "attribute phrase, in phrase order"),
    "--view-title-words": Option([2, 4], "views lever: MIN MAX of the title's words a word view keeps"),
    "--view-probability": Option(0.5, "views lever: chance that a training query is a view"),
    "--hard-negative-columns": Option(["articleType", "baseColour"], "hard_negatives lever: SAME DIFFER, the text "
                                      "columns whose values gather look-alikes in a batch", metavar="COLUMN"),
    "--matryoshka-dims": Option([64, 128], "matryoshka lever: the prefix widths trained to work alone"),
}  # fmt: skip


def retriever_args(p: argparse.ArgumentParser, text: str) -> dict[str, Any]:
    """``--retriever-args`` read once: a JSON object of ProductRetriever keyword arguments (not those built here)."""
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as err:
        p.error(f"--retriever-args is not JSON ({err}): {text}")
    if not isinstance(extra, dict):
        p.error(f"--retriever-args must be a JSON object of ProductRetriever arguments, not {text}")
    known = set(inspect.signature(ProductRetriever.__init__).parameters) - {"self"} - BUILT
    unknown = sorted(set(extra) - known)
    if unknown:
        p.error(f"--retriever-args: {unknown} are not ProductRetriever arguments this benchmark takes "
                f"({', '.join(sorted(known))})")  # fmt: skip
    return extra


def preset(lever: str, args: argparse.Namespace) -> dict[str, Any]:
    """The ProductRetriever arguments of one lever (``all``: every lever's; ``a+b``: those of ``a`` and ``b``)."""
    views = {"query_views": {"title_words": list(args.view_title_words), "attribute_columns": list(args.view_columns),
                             "probability": args.view_probability}}  # fmt: skip
    same, differ = args.hard_negative_columns
    presets: dict[str, dict[str, Any]] = {
        "views": views,
        "multi_positive": {**views, "multi_positive": True},
        "hard_negatives": {"hard_negatives": {"same": same, "differ": differ}},
        "matryoshka": {"matryoshka_dims": list(args.matryoshka_dims)},
        "text_skip": {"text_skip": True},
    }
    parts = list(presets) if lever == "all" else lever.split("+")
    return {k: v for part in parts for k, v in presets[part].items()}


def variants(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each retriever to train by name, with its ProductRetriever arguments: every ``--variants`` retriever with
    ``--retriever-args``, each followed by its ``--levers`` variants (``<variant> + <lever>``)."""
    if len(args.hard_negative_columns) != 2:
        p.error(f"--hard-negative-columns takes two columns, SAME DIFFER, not {args.hard_negative_columns}")
    unknown = [lv for lv in args.levers if lv != "all" and not all(part in LEVERS[:-1] for part in lv.split("+"))]
    if unknown:
        p.error(f"--levers: unknown {unknown}; known: {', '.join(LEVERS)} (or several joined by '+')")
    out: dict[str, dict[str, Any]] = {}
    bases = args.lever_bases or args.variants
    if set(bases) - set(args.variants):
        p.error(f"--lever-bases {sorted(set(bases) - set(args.variants))} not among --variants {args.variants}")
    for base in dict.fromkeys(args.variants):
        out[base] = dict(args.retriever_args)
        for lever in dict.fromkeys(args.levers if base in bases else []):
            if base != "fused" and "text_skip" in lever.split("+"):
                continue  # a photo-only product vector has no text to keep ("all" keeps the other four)
            levers = preset(lever, args)
            if base != "fused":  # "all" on a photo-only product vector: the other four
                levers.pop("text_skip", None)
            out[f"{base} + {lever}"] = {**args.retriever_args, **levers}
    for name, kwargs in out.items():
        check(p, name, kwargs)
    return out


def base_of(name: str) -> str:
    """The ``--variants`` retriever a variant name starts from (``fused + views`` -> ``fused``)."""
    return name.split(" + ", 1)[0]


def check(p: argparse.ArgumentParser, name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse a variant's lever settings before the towers run (the retriever would refuse them minutes later)."""
    try:
        for key, parse in (("query_views", QueryViews.parse), ("hard_negatives", HardNegatives.parse)):
            if kwargs.get(key) is not None:
                if not isinstance(kwargs[key], dict):
                    raise UserError(f"{key} must be a JSON object, not {kwargs[key]}")
                parse(kwargs[key])
        matryoshka_widths(kwargs.get("matryoshka_dims"), int(kwargs.get("embed_dim", EMBED_DIM)))
        if kwargs.get("multi_positive") and not (kwargs.get("query_views") or {}).get("attribute_columns"):
            raise UserError("multi_positive needs query_views.attribute_columns")
    except UserError as err:
        p.error(f"variant '{name}': {err}")


def view_settings(variant_args: Mapping[str, Mapping[str, Any]]) -> list[QueryViews]:
    """The distinct view settings of the variants (their views' texts are cached once)."""
    found = [QueryViews.parse(kw["query_views"]) for kw in variant_args.values() if kw.get("query_views") is not None]
    return list(dict.fromkeys(found))


def lever_columns(variant_args: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The text columns the variants' levers read (view attributes, hard-negative columns)."""
    columns: list[str] = []
    for kw in variant_args.values():
        columns += (kw.get("query_views") or {}).get("attribute_columns") or []
        if kw.get("hard_negatives") is not None:
            columns += [kw["hard_negatives"]["same"], kw["hard_negatives"]["differ"]]
    return list(dict.fromkeys(columns))


def view_texts(
    records: list[ProductRecord], rows: list[int], titles: list[str], settings: list[QueryViews]
) -> list[str]:
    """Every view text of the products ``rows`` under each of ``settings`` (``product_views``), each text once."""
    out: dict[str, None] = {}
    for views in settings:
        for r in rows:
            out.update(dict.fromkeys(v.text for v in product_views(titles[r], records[r].texts, views)))
    return list(out)
