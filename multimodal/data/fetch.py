"""Photos by URL and in object storage: one fetcher for http(s), s3, gs and every other fsspec scheme.

Every fetch is bounded: ``timeout_s`` per attempt (redirects and body included, for http), ``retries`` more attempts
after a failure that may pass (5xx, 408, 429, reset, timeout) with exponential back-off, at most ``max_bytes`` read.
So one URL costs at most ``(retries + 1) * timeout_s`` plus the back-off, and every failure is a one-line
:class:`~multimodal.errors.BadSampleError` naming the URL. Fetched photos go to a content-addressed local cache
(:mod:`multimodal.data.photo_cache`); local files are read as they are, never cached. With ``allow_hosts`` (the
service), only those hosts are fetched, and never at a loopback, link-local or private address.

Imports no torch: this is the light core that batch jobs, data-loading workers and the service share.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from multimodal.data.photo_cache import PhotoCache, default_cache_dir
from multimodal.data.photo_format import decode_photo, sniff_format
from multimodal.data.photo_guard import FetchFailure, check_url, missing_backend, one_line, read_bounded
from multimodal.errors import BadSampleError

__all__ = ["FetchOptions", "PhotoFetcher", "decode_photo", "is_remote", "photo_url", "sniff_format"]

HTTP_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class FetchOptions:
    """How photos are fetched; every limit is per URL.

    Attributes:
        timeout_s: one attempt (connection, redirects, the whole body) must end within this many seconds.
        retries: further attempts after a failure that may pass (5xx, 408, 429, reset, timeout).
        backoff_s: the wait before the first retry; it doubles for each further one.
        max_bytes: a longer body is refused (after reading at most ``max_bytes + 1`` bytes).
        cache_dir: the photo cache; None: ``$MULTIMODAL_CACHE/photos`` (default ``~/.cache/multimodal/photos``);
            ``""``: no cache.
        cache_bytes: size limit of the cache; least recently used photos are evicted past it.
        concurrency: photos fetched at once by ``fetch_many``.
        allow_hosts: None: any host (batch jobs). A tuple: only these hosts (bucket names for s3:// and gs://),
            and never at a loopback, link-local or private address (the service's rule for URLs in requests).
    """

    timeout_s: float = 10.0
    retries: int = 2
    backoff_s: float = 0.25
    max_bytes: int = 32 * 2**20
    cache_dir: str | None = None
    cache_bytes: int = 2 * 2**30
    concurrency: int = 16
    allow_hosts: tuple[str, ...] | None = None

    def bound_s(self) -> float:
        """The longest one URL can take: every attempt timing out, plus the back-off between them."""
        return (self.retries + 1) * self.timeout_s + sum(self.backoff_s * 2**i for i in range(self.retries))


def _scheme(ref: str) -> str:
    scheme = urlsplit(ref).scheme
    return scheme if len(scheme) > 1 else ""  # "C:\photo.jpg" is a Windows path, not a URL


def is_remote(ref: str) -> bool:
    """Whether ``ref`` is a URL to fetch: any scheme but ``file://`` (http, https, s3, gs, memory, ...)."""
    return _scheme(ref) not in ("", "file")


def photo_url(root: str | None, ref: str) -> str | None:
    """The URL a photo reference points to, or None for a local file (the local rule then applies).

    An absolute URL in the cell wins; a relative reference under a URL root is joined to it
    (``https://cdn/img/`` + ``a/1.jpg``); anything under a local root, or an absolute local path, is local.
    """
    if is_remote(ref):
        return ref
    if root is None or not is_remote(root) or _scheme(ref) == "file" or ref.startswith(("/", "\\")):
        return None
    return root.rstrip("/") + "/" + ref


class PhotoFetcher:
    """Fetches photos by URL: bounded in time and size, retried with back-off, cached by content.

    Picklable (for data-loading workers): the fsspec filesystem and its connections are created on first use in
    each process and never pickled. ``stats`` counts ``requests`` sent, ``cache_hits``, ``bytes_fetched`` (from
    the network or bucket) and ``failures`` (URLs given up on), in this process.
    """

    def __init__(self, options: FetchOptions = FetchOptions()) -> None:  # noqa: B008 - frozen, so shared safely
        self.options = options
        self.stats: dict[str, int] = {"requests": 0, "cache_hits": 0, "bytes_fetched": 0, "failures": 0}
        cache_dir = default_cache_dir() if options.cache_dir is None else options.cache_dir
        self.cache = PhotoCache(cache_dir, options.cache_bytes) if cache_dir != "" else None
        self._lock = threading.Lock()
        self._http: Any = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_lock=None, _http=None, _pid=None, stats=dict(self.stats))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _add(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self.stats[key] += amount

    def _http_fs(self) -> Any:
        import os

        import fsspec

        with self._lock:
            if self._http is None or self._pid != os.getpid():  # fsspec's loop does not survive a fork
                import aiohttp

                from multimodal.data.photo_http import public_client

                options = self.options
                timeout = aiohttp.ClientTimeout(sock_connect=options.timeout_s, sock_read=options.timeout_s)
                extra = {} if options.allow_hosts is None else {"get_client": public_client}
                client_kwargs = {"timeout": timeout}
                self._http = fsspec.filesystem("http", client_kwargs=client_kwargs, skip_instance_cache=True, **extra)
                self._pid = os.getpid()
            return self._http

    def _attempt(self, url: str) -> bytes:
        opts = self.options
        if _scheme(url) in HTTP_SCHEMES:
            from fsspec.asyn import sync

            from multimodal.data.photo_http import http_get

            fs = self._http_fs()
            return sync(fs.loop, http_get, fs, url, opts.timeout_s, opts.max_bytes, opts.allow_hosts, self._add_request)
        return self._read_fsspec(url)

    def _add_request(self) -> None:
        self._add("requests")

    def _read_fsspec(self, url: str) -> bytes:
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(url)
        except ImportError as err:
            raise FetchFailure(missing_backend(_scheme(url)), False) from err
        except ValueError as err:
            raise FetchFailure(missing_backend(_scheme(url)) + f" ({one_line(err)})", False) from err
        self._add("requests")
        try:
            with fs.open(path, "rb") as file:
                return read_bounded(file.read, self.options.max_bytes)
        except FileNotFoundError as err:
            raise FetchFailure("not found", False) from err
        except PermissionError as err:
            raise FetchFailure(f"permission denied ({one_line(err)})", False) from err
        except FetchFailure:
            raise
        except Exception as err:  # noqa: BLE001 - backends raise their own types for network trouble: retry them
            raise FetchFailure(f"{type(err).__name__}: {one_line(err)}", True) from err

    def _with_retries(self, url: str) -> bytes:
        opts = self.options
        for attempt in range(opts.retries + 1):
            try:
                return self._attempt(url)
            except FetchFailure as failure:
                if not failure.transient or attempt == opts.retries:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    raise FetchFailure(failure.reason + tries, False) from failure
            time.sleep(opts.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def fetch(self, url: str) -> bytes:
        """The bytes of the photo at ``url`` (a URL of any fsspec scheme, or a local path, read as it is).

        Raises:
            BadSampleError: one line naming the URL and why (HTTP 404, HTTP 500 after 3 tries, redirect loop, body
                over max_bytes, timeout after 10s, connection reset, host not allowed, a private address, a missing
                fsspec backend such as s3fs).
        """
        if not is_remote(url):
            return self._read_local(url)
        try:
            check_url(url, self.options.allow_hosts)
            cached = self.cache.get(url) if self.cache is not None else None
            if cached is not None:
                self._add("cache_hits")
                return cached
            got: bytes | FetchFailure = self._with_retries(url)
        except FetchFailure as failure:
            got = failure
        data = self._fetched(url, got)
        if isinstance(data, BadSampleError):
            raise data
        return data

    def _read_local(self, ref: str) -> bytes:
        try:
            with open(urlsplit(ref).path if _scheme(ref) == "file" else ref, "rb") as file:
                return read_bounded(file.read, self.options.max_bytes)
        except (OSError, FetchFailure) as err:
            self._add("failures")
            reason = err.reason if isinstance(err, FetchFailure) else one_line(err)
            raise BadSampleError(f"cannot read photo {ref}: {reason}") from None

    def _fetch_http_many(self, urls: list[str]) -> dict[str, bytes | BadSampleError]:
        """http(s) ``urls`` from the cache, the rest all at once as coroutines on fsspec's loop (no thread each)."""
        from fsspec.asyn import sync

        from multimodal.data.photo_http import http_get_many

        out: dict[str, bytes | BadSampleError] = {}
        for url in urls:
            try:
                check_url(url, self.options.allow_hosts)
                cached = self.cache.get(url) if self.cache is not None else None
            except FetchFailure as failure:
                cached, out[url] = None, BadSampleError(f"cannot fetch photo {url}: {failure.reason}")
            if cached is not None:
                self._add("cache_hits")
                out[url] = cached
        todo = [url for url in urls if url not in out]
        if todo:
            fs = self._http_fs()
            got = sync(fs.loop, http_get_many, fs, todo, self.options, self._add_request)
            for url, data in zip(todo, got, strict=True):
                out[url] = self._fetched(url, data)
        return out

    def _fetched(self, url: str, data: bytes | FetchFailure) -> bytes | BadSampleError:
        """What one fetch gave, counted and cached, or its one-line error."""
        if isinstance(data, FetchFailure):
            self._add("failures")
            return BadSampleError(f"cannot fetch photo {url}: {data.reason}")
        self._add("bytes_fetched", len(data))
        if self.cache is not None:
            try:
                self.cache.put(url, data)
            except OSError:
                pass  # a full or read-only cache disk costs speed, never a photo
        return data

    def _fetch_or_error(self, url: str) -> bytes | BadSampleError:
        try:
            return self.fetch(url)
        except BadSampleError as err:
            return err

    def fetch_many(self, urls: list[str]) -> list[bytes | BadSampleError]:
        """Fetch ``urls`` at once (``concurrency`` threads): the bytes or the error of each, in input order.

        A URL given twice is fetched once. Never raises for a bad URL, and never waits past each URL's bound
        (``FetchOptions.bound_s``), even on a storage backend that ignores its own timeouts.
        """
        unique = list(dict.fromkeys(urls))
        results: dict[str, bytes | BadSampleError] = self._fetch_http_many(
            [u for u in unique if _scheme(u) in HTTP_SCHEMES]
        )
        unique = [u for u in unique if u not in results]
        if not unique:
            return [results[url] for url in urls]
        workers = max(1, min(self.options.concurrency, len(unique)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="photo-fetch")
        futures = {url: pool.submit(self._fetch_or_error, url) for url in unique}
        rounds = -(-len(unique) // workers)
        deadline = time.monotonic() + rounds * self.options.bound_s() + 1.0
        for url, future in futures.items():
            try:
                results[url] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                self._add("failures")
                results[url] = BadSampleError(f"cannot fetch photo {url}: no answer within {self.options.bound_s():g}s")
        pool.shutdown(wait=False, cancel_futures=True)
        return [results[url] for url in urls]
