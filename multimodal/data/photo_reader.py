"""Where a product's photo is read from: a local file, a URL or a bucket, or an image already in memory.

One rule for every job, data module and the Python API. The image root is a local folder or a URL prefix
(``https://cdn.shop.com/img/``, ``s3://shop/photos/``). A photo reference is an absolute URL (fetched as it is), a
path relative to the root (a file under a local root, a URL under a URL root) or an absolute local path. With
``confine``, a photo outside the root is refused: a local path that resolves outside a local root
(:func:`~multimodal.data.images.resolve_image_path`), any URL under a local root, a URL that does not start with a
URL root.

URLs go through :class:`~multimodal.data.fetch.PhotoFetcher` (timeouts, retries, size limit, the photo cache).
:meth:`PhotoReader.prefetch` fetches the URLs of a whole batch at once, so a data-loading worker waits for the
slowest photo of the batch, not for the sum of them. Imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from multimodal.data.fetch import FetchOptions, PhotoFetcher, decode_photo, is_remote, photo_url
from multimodal.data.images import load_image, resolve_image_path, to_rgb
from multimodal.errors import BadSampleError

ImageRoot = Path | str | None  # a local folder, a URL prefix, or None (the working directory)


def image_root(value: str | Path | None) -> ImageRoot:
    """An image root as given on a command line or in a config: a URL prefix stays text, a folder becomes a Path."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) and is_remote(value) else Path(value)


class PhotoReader:
    """Reads the photos of products under one image root (picklable: DataLoader workers each get a copy).

    Args:
        root: the image root (see the module's rule).
        confine: refuse photos outside the root.
        fetch: how URLs are fetched (None: :class:`~multimodal.data.fetch.FetchOptions` defaults).
    """

    def __init__(self, root: ImageRoot, confine: bool = False, fetch: FetchOptions | None = None) -> None:
        self.root, self.confine = root, confine
        self.fetch = fetch or FetchOptions()
        self._fetcher: PhotoFetcher | None = None  # made on first use, in the process that fetches
        self._fetched: dict[str, bytes | BadSampleError] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fetcher": None, "_fetched": {}}

    @property
    def remote_root(self) -> str | None:
        return self.root if isinstance(self.root, str) else None

    def url(self, photo: str) -> str | None:
        """The URL ``photo`` is fetched from, or None for a local file; a URL outside the root under ``confine``
        is a :class:`BadSampleError`."""
        url = photo_url(self.remote_root, photo)
        if url is not None and self.confine:
            root = self.remote_root
            climbs = ".." in urlsplit(url).path.split("/")
            if root is None or climbs or not url.startswith(root.rstrip("/") + "/"):
                where = f"the image root {root}" if root else f"the local image root {self.root}"
                raise BadSampleError(f"photo URL '{photo}' is outside {where} (confine_images is on)")
        return url

    def local_path(self, photo: str) -> Path | None:
        """The file ``photo`` names (the local rule: under a local root, or absolute), or None when it is a URL;
        a path outside a local root under ``confine`` is a :class:`BadSampleError`."""
        if self.url(photo) is not None:
            return None
        local_root = None if isinstance(self.root, str) else self.root
        return resolve_image_path(local_root, photo, self.confine and local_root is not None)

    def prefetch(self, photos: list[Any]) -> None:
        """Fetch the URLs among ``photos`` together (concurrently, each bounded); :meth:`read` then takes them from
        here. A photo whose URL is refused or fails is left to :meth:`read`, which names it."""
        urls = []
        for photo in photos:
            try:
                url = self.url(photo) if isinstance(photo, str) else None
            except BadSampleError:
                continue
            if url is not None and url not in self._fetched:
                urls.append(url)
        if len(urls) > 1:
            self._fetched.update(zip(urls, self.fetcher().fetch_many(urls), strict=True))

    def forget(self) -> None:
        """Drop the prefetched photos (after their batch)."""
        self._fetched = {}

    def fetcher(self) -> PhotoFetcher:
        if self._fetcher is None:
            self._fetcher = PhotoFetcher(self.fetch)
        return self._fetcher

    def read(self, photo: Any) -> Image.Image:
        """One photo as an RGB image. Raises :class:`BadSampleError` naming the file or URL."""
        if isinstance(photo, Image.Image):
            return to_rgb(photo)
        path = self.local_path(photo)
        if path is not None:
            return load_image(path)
        url = self.url(photo)
        assert url is not None
        data = self._fetched.pop(url, None)
        if data is None:
            data = self.fetcher().fetch(url)
        if isinstance(data, BadSampleError):
            raise data
        return decode_photo(data, url)
