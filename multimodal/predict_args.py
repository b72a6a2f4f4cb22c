"""The command line of ``multimodal predict``, ``export`` and ``caption``: one parser, its option groups.

Imports nothing heavy, so ``--help`` and argument errors answer before torch is imported.
"""

from __future__ import annotations

import argparse

from multimodal.arguments import Parser

GENERATION_OPTIONS = (
    "num_beams", "max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p",
    "repetition_penalty", "no_repeat_ngram_size", "length_penalty",
)  # fmt: skip
DESCRIPTIONS = {
    "predict": "Predict with any task's checkpoint: tags, product vectors or captions.",
    "export": "Export one L2-normalised vector per product (a retriever checkpoint) to resumable shards.",
    "caption": "Caption product photos in batches (a captioner checkpoint); JSONL out, resumable.",
}
EPILOG = """The task of the checkpoint picks the output:
  tagger     --out predictions.jsonl (or .csv): id, label and score per attribute, tags with probabilities
  retriever  --out folder/: vector shards + products table for `multimodal index` (same as `multimodal export`)
  captioner  --out captions.jsonl (or .csv): id, image, caption, score (same as `multimodal caption`)
One output line per input row, in input order: an unreadable photo, an empty or a repeated id gives its row an
"error" field (a job whose every row fails exits with status 2). Re-running the same command after a kill
finishes the missing blocks only; an --out that is not this job's own output is refused, never touched.

  multimodal predict --ckpt_path runs/tagging/.../best.ckpt --data.manifest new.csv --out tags.jsonl --top_k 3"""


def parser(command: str = "predict") -> argparse.ArgumentParser:
    """The parser of one batch command (``predict``, ``export`` or ``caption``); every task's options are in it,
    since the checkpoint, not the command, picks the task."""
    p = Parser(
        prog=f"multimodal {command}",
        description=DESCRIPTIONS[command],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _input_options(p)
    _photo_options(p)
    _running_options(p)
    _engine_options(p)
    _tagging_options(p)
    _vector_options(p)
    _caption_options(p)
    return p


def _input_options(p: argparse.ArgumentParser) -> None:
    """The checkpoint, runtime, input, image root and output."""
    p.add_argument(
        "--ckpt_path", "--ckpt", required=True, help="checkpoint written by `multimodal fit` (or an ONNX export folder)"
    )
    p.add_argument(
        "--runtime",
        choices=("torch", "onnx", "onnx-int8"),
        default="torch",
        help="PyTorch eager (default) or ONNX Runtime fp32 / int8 on the CPU (taggers and retrievers; a checkpoint "
        "is exported once to the user cache; an export folder always runs on ONNX Runtime)",
    )
    p.add_argument(
        "--input",
        "--data.manifest",
        "--data.init_args.manifest",
        dest="input",
        help="manifest (.csv, .jsonl, .parquet) or folder of photos (default: the manifest of --config, else the "
        "training manifest named in the checkpoint)",
    )
    p.add_argument(
        "--image_root",
        "--data.image_root",
        "--data.init_args.image_root",
        dest="image_root",
        help="folder or URL prefix (https://cdn.shop.com/img/, s3://shop/photos/) the manifest's relative photo "
        "paths are relative to (default: the manifest's folder); absolute paths and URLs are read as they are",
    )
    p.add_argument(
        "--confine_images",
        "--data.confine_images",
        "--data.init_args.confine_images",
        dest="confine_images",
        action="store_true",
        help="refuse, row by row, image paths outside the image root (../, absolute paths elsewhere, symlinks out)",
    )
    p.add_argument("--config", help="a training config: its data section gives the default manifest and image root")
    p.add_argument("--out", required=True, help="output file (.jsonl / .csv) or, for vectors, folder")


def _photo_options(p: argparse.ArgumentParser) -> None:
    """How photo URLs (a URL --image_root, or URLs in the photo column) are fetched."""
    photos = p.add_argument_group("photos by URL (http(s), s3://, gs://: a URL --image_root or URLs in the cells)")
    photos.add_argument("--fetch_timeout", type=float, default=10.0, help="seconds one attempt may take (default 10)")
    photos.add_argument("--fetch_retries", type=int, default=2, help="retries of a 5xx, reset or timeout (default 2)")
    photos.add_argument("--fetch_concurrency", type=int, default=16, help="photos fetched at once (default 16)")
    photos.add_argument("--max_photo_bytes", type=int, default=32 * 2**20, help="largest photo read (default 32 MiB)")
    photos.add_argument(
        "--photo_cache",
        help="folder of the photo cache (default $MULTIMODAL_CACHE/photos, else ~/.cache/multimodal/photos); ''"
        " for none",
    )
    photos.add_argument("--photo_cache_bytes", type=int, default=2 * 2**30, help="cache size limit (default 2 GiB)")


def fetch_options(args: argparse.Namespace) -> object:
    """The :class:`multimodal.data.fetch.FetchOptions` of the command line (one-line error for a bad value)."""
    from multimodal.data.fetch import FetchOptions
    from multimodal.errors import UserError

    if not hasattr(args, "fetch_timeout"):  # a job request made without this parser
        return FetchOptions()
    if args.fetch_timeout <= 0 or args.fetch_retries < 0 or args.fetch_concurrency < 1 or args.max_photo_bytes < 1:
        raise UserError(
            "--fetch_timeout, --fetch_concurrency and --max_photo_bytes must be positive, --fetch_retries >= 0"
        )
    return FetchOptions(
        timeout_s=args.fetch_timeout,
        retries=args.fetch_retries,
        max_bytes=args.max_photo_bytes,
        cache_dir=args.photo_cache,
        cache_bytes=args.photo_cache_bytes,
        concurrency=args.fetch_concurrency,
    )


def _running_options(p: argparse.ArgumentParser) -> None:
    """Batching, resumable blocks and the Lightning devices of the job."""
    run = p.add_argument_group("running")
    run.add_argument("--batch_size", "--batch-size", "--data.batch_size", type=int, help="items per batch")
    run.add_argument(
        "--block_size",
        "--shard-size",
        "--shard_size",
        type=int,
        help="items per resumable block (an export's shard); default 1024 rows, 8192 vectors",
    )
    run.add_argument("--num_workers", "--num-workers", "--data.num_workers", type=int, help="decoding workers")
    run.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    run.add_argument("--devices", default="1", help="devices / processes (e.g. 2 with --strategy ddp)")
    run.add_argument("--strategy", default="auto", help="Lightning strategy (ddp for several devices)")
    run.add_argument("--precision", default=None, help="Lightning precision, e.g. bf16-mixed (default: full)")
    run.add_argument("--limit_batches", "--limit-batches", type=int, help="stop after this many batches per rank")
    run.add_argument("--no_progress", "--no-progress", action="store_true", help="hide the progress bar")


def _engine_options(p: argparse.ArgumentParser) -> None:
    """Where the blocks run: Lightning in this process (and its DDP), or an actor pool on Ray."""
    ray = p.add_argument_group("engine (Ray: the same blocks, output and resume, on a pool of actors)")
    ray.add_argument("--engine", choices=("lightning", "ray"), default="lightning", help="default lightning")
    ray.add_argument(
        "--ray_address", help="a Ray cluster (host:port, ray://host:port or auto); default: start a local Ray here"
    )
    ray.add_argument("--num_actors", type=int, default=2, help="actors, each holding one model (default 2)")
    ray.add_argument("--actor_cpus", type=float, default=1.0, help="CPUs reserved per actor (default 1)")
    ray.add_argument("--actor_gpus", type=float, default=0.0, help="GPUs reserved per actor (default 0)")


def _tagging_options(p: argparse.ArgumentParser) -> None:
    """Options of a tagger's rows."""
    tags = p.add_argument_group("tagging")
    tags.add_argument("--top_k", type=int, default=None, help="also write the top-k labels per attribute (JSONL)")


def _vector_options(p: argparse.ArgumentParser) -> None:
    """Options of a retriever's export folder."""
    export = p.add_argument_group("vectors (retrieval)")
    export.add_argument(
        "--columns",
        nargs="*",
        default=None,
        help="manifest columns stored with the ids, for search --where and index --lexical (default: every column; "
        "--columns alone: none)",
    )
    export.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored precision")
    export.add_argument(
        "--format",
        choices=("safetensors", "npy", "parquet"),
        default="safetensors",
        help="shard format (parquet: id, vector and metadata per row, for a vector database)",
    )
    export.add_argument(
        "--dim",
        type=int,
        default=None,
        help="keep the first DIM dimensions of each vector, L2-renormalised (a Matryoshka-trained retriever); "
        "default: all",
    )


def _caption_options(p: argparse.ArgumentParser) -> None:
    """Options of a captioner's generation (Hugging Face ``generate`` options among them)."""
    cap = p.add_argument_group("captioning")
    cap.add_argument("--prompt", help="fixed prompt text before the caption (default: the trained one)")
    cap.add_argument("--do_sample", action="store_true", help="sample instead of greedy / beam search")
    for name in GENERATION_OPTIONS:
        kind = int if name in ("num_beams", "max_new_tokens", "min_new_tokens", "no_repeat_ngram_size") else float
        if name == "top_k":
            continue  # shared with tagging's --top_k: the task decides what it means
        cap.add_argument(f"--{name}", type=kind, help="Hugging Face generate option")
    cap.add_argument("--no_cache", action="store_true", help="generate without the KV cache (slower; same text)")
    cap.add_argument("--trim_vocabulary", metavar="{on,off}", help="logits for the training targets' token ids "
                     "only (faster; default on when the checkpoint holds them)")  # fmt: skip
    cap.add_argument("--rerank", metavar="{on,off}", help="consensus reranking: beam candidates, keep the one closest "
                     "in CIDEr-D to the titles of the most similar training photos (default: the checkpoint's "
                     "model.rerank; on needs a checkpoint with a caption memory)")  # fmt: skip
    cap.add_argument("--seed", type=int, default=0, help="sampling seed (same inputs and batch size: same captions)")
