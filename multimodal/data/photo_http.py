"""One photo over HTTP(S) through fsspec's aiohttp session: bounded in time and size, every redirect checked.

fsspec's ``HTTPFileSystem`` owns the event loop and the pooled ``aiohttp`` session; this module streams one GET on
that session the way its ``_get_file`` does, but stops at ``max_bytes + 1``, follows redirects itself (so an
allow-list is checked at every hop and a loop is named as such) and sorts each failure into transient (worth
another try) or permanent. Imports no torch.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import Any

import aiohttp
import yarl

from multimodal.data.photo_guard import FetchFailure, check_ip, check_url, one_line

MAX_REDIRECTS = 10
REDIRECTS = frozenset({301, 302, 303, 307, 308})
RETRIED_4XX = frozenset({408, 429})  # "timeout" and "slow down": the same request may succeed later
CHUNK_BYTES = 256 * 2**10


class PublicResolver(aiohttp.ThreadedResolver):
    """aiohttp's resolver, refusing names that resolve to a non-public address (no DNS-rebinding window)."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, Any]]:
        """Resolve ``host`` and check every address; raises FetchFailure for a non-public one."""
        addresses = await super().resolve(host, port, family)
        for address in addresses:
            check_ip(address["host"], host)
        return addresses


async def public_client(**kwargs: Any) -> aiohttp.ClientSession:
    """fsspec's ``get_client`` for allow-listed fetching: a session whose connector uses :class:`PublicResolver`."""
    kwargs.pop("loop", None)  # fsspec passes its loop; the session picks up the running one
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=PublicResolver()), **kwargs)


def _check_status(status: int) -> None:
    if 200 <= status < 300:
        return
    transient = status >= 500 or status in RETRIED_4XX
    label = {404: " (not found)", 403: " (forbidden)", 410: " (gone)"}.get(status, "")
    raise FetchFailure(f"HTTP {status}{label}", transient)


async def _read_body(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    too_long = f"body over max_bytes={max_bytes}"
    length = response.content_length
    if length is not None and length > max_bytes:
        raise FetchFailure(f"{too_long} (Content-Length {length})", False)
    chunks: list[bytes] = []
    total = 0
    while chunk := await response.content.read(CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:  # at most one chunk past the limit is ever held
            raise FetchFailure(too_long, False)
        chunks.append(chunk)
    return b"".join(chunks)


async def _get(
    fs: Any, url: str, max_bytes: int, allow_hosts: tuple[str, ...] | None, sent: Callable[[], None]
) -> bytes:
    session = await fs.set_session()
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, allow_hosts)
        sent()
        async with session.get(fs.encode_url(url), allow_redirects=False) as response:
            location = response.headers.get("Location")
            if response.status in REDIRECTS and location:
                url = str(response.url.join(yarl.URL(location)))
                continue
            _check_status(response.status)
            return await _read_body(response, max_bytes)
    raise FetchFailure(f"redirect loop (more than {MAX_REDIRECTS} redirects)", False)


async def http_get(
    fs: Any, url: str, timeout_s: float, max_bytes: int, allow_hosts: tuple[str, ...] | None, sent: Callable[[], None]
) -> bytes:
    """One attempt at ``url`` on ``fs``'s session (run it on ``fs.loop``); ``sent()`` is called per request.

    The whole attempt, redirects and body included, ends within ``timeout_s``.

    Raises:
        FetchFailure: any failure, with its reason and whether it is worth another attempt.
    """
    try:
        return await asyncio.wait_for(_get(fs, url, max_bytes, allow_hosts, sent), timeout_s)
    except FetchFailure:
        raise
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as err:
        raise FetchFailure(f"timeout after {timeout_s:g}s", True) from err
    except aiohttp.TooManyRedirects as err:
        raise FetchFailure(f"redirect loop ({one_line(err)})", False) from err
    except aiohttp.ServerDisconnectedError as err:
        raise FetchFailure("connection closed without an answer", True) from err
    except (aiohttp.ClientPayloadError, ConnectionResetError) as err:
        raise FetchFailure(f"connection reset ({one_line(err)})", True) from err
    except aiohttp.InvalidURL as err:
        raise FetchFailure(f"invalid URL ({one_line(err)})", False) from err
    except (aiohttp.ClientError, OSError) as err:
        if getattr(err, "errno", None) == errno.ECONNRESET:
            raise FetchFailure("connection reset by the server", True) from err
        raise FetchFailure(f"connection failed ({one_line(err)})", True) from err


async def http_get_retried(fs: Any, url: str, options: Any, sent: Callable[[], None]) -> bytes | FetchFailure:
    """:func:`http_get` with ``options``' retries and back-off (a :class:`~multimodal.data.fetch.FetchOptions`): the
    bytes, or the last failure, saying how many tries it took."""
    for attempt in range(options.retries + 1):
        try:
            return await http_get(fs, url, options.timeout_s, options.max_bytes, options.allow_hosts, sent)
        except FetchFailure as failure:
            if not failure.transient or attempt == options.retries:
                tries = f" (after {attempt + 1} tries)" if attempt else ""
                return FetchFailure(failure.reason + tries, False)
        await asyncio.sleep(options.backoff_s * 2**attempt)
    raise AssertionError("unreachable")


async def http_get_many(fs: Any, urls: list[str], options: Any, sent: Callable[[], None]) -> list[bytes | FetchFailure]:
    """Every URL at once on ``fs``'s loop, ``options.concurrency`` in flight: one coroutine each, no thread per
    photo (the client's CPU per photo is what a batch job pays beside its model)."""
    gate = asyncio.Semaphore(options.concurrency)

    async def one(url: str) -> bytes | FetchFailure:
        async with gate:
            return await http_get_retried(fs, url, options, sent)

    return list(await asyncio.gather(*(one(url) for url in urls)))
