"""``multimodal serve``: tagging, captioning and search as one HTTP service (LitServe), with a search page."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from multimodal.arguments import Parser
from multimodal.errors import UserError
from multimodal.serve import DEFAULT_MAX_PIXELS, DEFAULT_RELOAD_INTERVAL, MB


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="multimodal serve",
        description="Serve trained models over HTTP: POST /tag, POST /caption, GET|POST /search, a search page at /, "
        "/health, /info and the OpenAPI schema at /openapi.json (interactive at /docs). Any subset of the three "
        "models may be given; the endpoints of the others answer 404.",
    )
    m = p.add_argument_group("models")
    m.add_argument("--tagger", metavar="CKPT", help="a tagger checkpoint (multimodal fit, tagging config)")
    m.add_argument("--captioner", metavar="CKPT", help="a captioner checkpoint")
    m.add_argument("--index", metavar="FOLDER", help="a search index (multimodal index); its photos are served too")
    m.add_argument("--reload_interval", "--reload-interval", type=float, default=DEFAULT_RELOAD_INTERVAL,
                   metavar="SECONDS",
                   help="seconds between looks for a new build of --index (after `multimodal index` rebuilds or "
                        "updates it); the new build is loaded in the background and answers from then on "
                        f"(default {DEFAULT_RELOAD_INTERVAL}; 0: never)")  # fmt: skip
    _page_options(p.add_argument_group("search page"))
    _server_options(p.add_argument_group("server"))
    i = p.add_argument_group("inputs")
    i.add_argument("--fetch_hosts", "--fetch-hosts", nargs="+", default=[], metavar="HOST",
                   help="let requests give photo URLs (field image_url) on these hosts only; never fetched at a "
                        "loopback, link-local or private address (default: no URL is fetched)")  # fmt: skip
    _registered_options(m)
    return p


def columns(value: str) -> list[str]:
    """A comma list of column names (spaces around them dropped, each kept once); "" is none."""
    return list(dict.fromkeys(c.strip() for c in value.split(",") if c.strip()))


def column(value: str) -> str:
    """One column name (an empty one is an argument error, not "unset")."""
    if not value.strip():
        raise argparse.ArgumentTypeError("give a column name")
    return value.strip()


def _page_options(g: argparse._ArgumentGroup) -> None:
    """The columns of --index the search page (and any paged /search) shows; unset, the service finds them in each
    build of the index (multimodal.search.facets)."""
    g.add_argument("--facets", type=columns, default=None, metavar="COLS",
                   help="the facet columns, a comma list (\"\": none; default: the stored columns with 2-200 short "
                        "values that repeat)")  # fmt: skip
    g.add_argument("--title_field", "--title-field", type=column, default=None, metavar="COL",
                   help="the column a result card is titled by (default: the index's first --lexical column, else "
                        "the text column whose values differ most)")  # fmt: skip
    g.add_argument("--display_fields", "--display-fields", type=columns, default=None, metavar="COLS",
                   help="the fields a card shows under its title, a comma list (\"\": none; default: the three "
                        "facets with the most distinct values)")  # fmt: skip


def _server_options(s: argparse._ArgumentGroup) -> None:
    """How the service runs: address, batching, workers, devices, runtime, limits."""
    s.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"],
                   help="address to listen on (default 127.0.0.1: this machine only)")  # fmt: skip
    s.add_argument("--port", type=int, default=8000, help="port, 1024-65535 (default 8000)")
    s.add_argument("--max_batch_size", "--max-batch-size", type=int, default=32,
                   help="dynamic batching: most requests answered by one forward pass (default 32)")  # fmt: skip
    s.add_argument("--batch_timeout", "--batch-timeout", type=float, default=0.01,
                   help="seconds a batch waits to fill (default 0.01)")  # fmt: skip
    s.add_argument("--forward_batch_size", "--forward-batch-size", type=int, default=None,
                   help="items per forward pass within a dynamic batch (default: the whole batch; on a CPU the "
                        "tagger runs passes of 8, its fastest per item)")  # fmt: skip
    s.add_argument("--workers", type=int, default=1, help="inference processes per model and device (default 1)")
    s.add_argument("--api_servers", "--api-servers", type=int, default=None,
                   help="HTTP server processes (default: one per inference worker)")  # fmt: skip
    s.add_argument("--accelerator", "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the models run (default auto: a GPU if there is one)")  # fmt: skip
    s.add_argument("--devices", default="auto", help="how many GPUs (default auto: all)")
    s.add_argument("--runtime", default="torch", choices=["torch", "onnx", "onnx-int8"],
                   help="the tagger and the search query towers on PyTorch (default) or ONNX Runtime on the CPU "
                        "(a checkpoint is exported once to the user cache); the captioner runs on PyTorch")  # fmt: skip
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads per inference worker (default: torch's, one per core)")  # fmt: skip
    s.add_argument("--fast_queue", "--fast-queue", action="store_true",
                   help="LitServe's ZeroMQ transport between HTTP servers and workers (instead of multiprocessing "
                        "queues)")  # fmt: skip
    s.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait for its answer")
    s.add_argument("--max_upload_mb", "--max-upload-mb", type=float, default=10.0,
                   help="largest accepted upload, MB (default 10)")  # fmt: skip
    s.add_argument("--max_pixels", "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest accepted image, pixels (default {DEFAULT_MAX_PIXELS:,})")  # fmt: skip
    s.add_argument("--log_level", "--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="server log level (default warning; info logs every request)")  # fmt: skip


def _registered_options(group: argparse._ArgumentGroup) -> None:
    """A ``--<setting>`` option for each registered task that is served (:mod:`multimodal.task`); added last, so
    that one that another option already has is a one-line error."""
    from multimodal.task import registered_tasks

    for task in registered_tasks():
        if task.serving is None:
            continue
        kind = "CKPT" if task.serving.reads_checkpoint else "FOLDER"
        about = f"a {task.name} model, served at POST /{task.serving.route} (registered task)"
        try:
            group.add_argument(f"--{task.serving.setting}", dest=task.serving.setting, metavar=kind, help=about)
        except argparse.ArgumentError:
            raise UserError(f"task '{task.name}' asks for the serve option --{task.serving.setting}, which "
                            "`multimodal serve` already has: declare another Serving.setting") from None  # fmt: skip


def settings(args: argparse.Namespace) -> Any:
    from multimodal.serve.app import Settings

    if not 1024 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is outside 1024..65535")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0:
        raise UserError("--max_upload_mb and --max_pixels must be positive")
    if args.timeout <= args.batch_timeout:  # LitServe refuses it with a traceback from its own server
        raise UserError(f"--timeout {args.timeout} must be longer than --batch_timeout {args.batch_timeout}")
    from multimodal.task import registered_tasks

    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    others = {t.serving.setting: getattr(args, t.serving.setting) for t in registered_tasks() if t.serving}
    return Settings(
        tagger=args.tagger, captioner=args.captioner, index=args.index, max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout, workers=args.workers, accelerator=args.accelerator, devices=devices,
        threads=args.threads, runtime=args.runtime, forward_batch_size=args.forward_batch_size,
        fast_queue=args.fast_queue, timeout=args.timeout, reload_interval=args.reload_interval,
        max_upload_bytes=int(args.max_upload_mb * MB), max_pixels=args.max_pixels, others=others,
        fetch_hosts=tuple(args.fetch_hosts), facets=args.facets, title_field=args.title_field,
        display_fields=args.display_fields,
    )  # fmt: skip


MAIN_PID = os.getpid()


def stop(signum: int, frame: Any) -> None:
    """SIGTERM: in the main process, LitServe's graceful shutdown (HTTP servers and inference workers stopped);
    in a forked HTTP server (which inherits this handler, and which uvicorn re-signals after its own shutdown), exit."""
    if os.getpid() != MAIN_PID:
        raise SystemExit(0)
    raise KeyboardInterrupt


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    config = settings(args)
    from multimodal.serve.app import build, check, served

    check(config)
    server = build(config)
    routes = [t.serving.route for t in served() if config.model(t.serving.setting)]
    host = "localhost" if args.host != "::" else "[::1]"
    print(f"multimodal serve: {', '.join('/' + r for r in routes)} at http://{host}:{args.port}/ "
          f"(max_batch_size {config.max_batch_size}, batch_timeout {config.batch_timeout}s); "
          "loading models...", file=sys.stderr, flush=True)  # fmt: skip
    signal.signal(signal.SIGTERM, stop)
    try:
        server.run(host=args.host, port=args.port, num_api_servers=args.api_servers, log_level=args.log_level,
                   generate_client_file=False)  # fmt: skip
    except RuntimeError as err:
        if "workers failed to start" in str(err):
            raise UserError("a model failed to load in its inference worker (its error is printed above)") from None
        raise
    except OSError as err:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
