"""The key figure's image: fetched from the configured arXiv host only, within a size cap.

The figure is an extra under a deep dive, never part of it: every failure here (another host,
a redirect off arXiv, a 404, a body over `figure_max_bytes`, bytes that are not an image, a
timeout) is one log line and `None`, never an exception. The caller posts the text first.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath

import httpx

from ..config import SourceSettings
from ..models import FigureImage
from .fulltext import MAX_REDIRECTS, RASTER_TYPES, KeyFigure

log = logging.getLogger(__name__)

# What each raster type starts with: a body that is not one of these is not posted.
_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}


class _Refused(Exception):
    """Why the image is not posted: one line, without the URL's query."""


def _same_origin(url: httpx.URL, origin: httpx.URL) -> bool:
    return (url.scheme, url.host, url.port) == (origin.scheme, origin.host, origin.port)


async def fetch_figure_image(
    client: httpx.AsyncClient, settings: SourceSettings, arxiv_id: str, figure: KeyFigure
) -> FigureImage | None:
    """The image bytes of `figure`, or None (logged once) when it cannot or may not be had."""
    try:
        async with asyncio.timeout(settings.extras_timeout_seconds):
            data, url = await _get(client, settings, httpx.URL(figure.image_url))
    except _Refused as exc:
        log.warning("key figure %s: %s; not posted", arxiv_id, exc)
        return None
    except TimeoutError:
        log.warning(
            "key figure %s: no image within %.0f s; not posted",
            arxiv_id,
            settings.extras_timeout_seconds,
        )
        return None
    except httpx.HTTPError as exc:
        log.warning("key figure %s: download failed (%s); not posted", arxiv_id, type(exc).__name__)
        return None
    name = posixpath.basename(url.path) or "figure"
    mime = next((m for m, heads in _MAGIC.items() if data.startswith(heads)), None)
    if mime is None or (mime == "image/webp" and data[8:12] != b"WEBP"):
        log.warning(
            "key figure %s: %s is not a PNG, JPEG, GIF or WebP image; not posted", arxiv_id, name
        )
        return None
    ext = posixpath.splitext(name)[1].lower()
    if RASTER_TYPES.get(ext) != mime:
        name = (
            f"{posixpath.splitext(name)[0]}{next(e for e, m in RASTER_TYPES.items() if m == mime)}"
        )
    return FigureImage(arxiv_id, data, name, mime, figure.caption, str(url))


async def _get(
    client: httpx.AsyncClient, settings: SourceSettings, target: httpx.URL
) -> tuple[bytes, httpx.URL]:
    origin = httpx.URL(settings.arxiv_url)
    limit = settings.figure_max_bytes
    for _ in range(MAX_REDIRECTS + 1):
        if not _same_origin(target, origin):
            raise _Refused(f"image is on {target.host or 'no host'}, not the arXiv host")
        async with client.stream("GET", target) as response:
            if response.is_redirect:
                target = target.join(response.headers.get("location", ""))
                continue
            if response.status_code != 200:
                raise _Refused(f"arXiv answered {response.status_code} for the image")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _Refused(f"image is {int(declared)} bytes, over the {limit}-byte cap")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise _Refused(f"image is over the {limit}-byte cap")
            return bytes(body), target
    raise _Refused("too many redirects for the image")
