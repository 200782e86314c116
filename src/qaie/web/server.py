"""The HTTP server of `qaie serve`: the page, the models' names, and one POST that enhances.

Standard library only (`http.server`): the page and its script are one file in the package,
so it works offline. API (JSON replies):

- ``GET /``: the page.
- ``GET /api/config``: ``{"models": [names], "max_upload_bytes": N, "diff_gain": 8}``.
- ``POST /api/enhance?models=0,1&name=FILE``: the image file's bytes as the body. Reply: the
  decoded input, each model's output (base64 PNG), its time, and for two models the amplified
  difference map and the PSNR between them. A bad file: 400 with ``{"error": LINE}``, LINE the
  message `qaie enhance` prints; an upload over the limit: 413.
"""

from __future__ import annotations

import base64
import io
import json
import math
import sys
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from qaie.errors import QaieError
from qaie.web.compare import DIFF_GAIN, Comparer, Comparison, load_models

PAGE = Path(__file__).parents[1] / "assets" / "web" / "index.html"
MAX_MODELS_PER_PHOTO = 2


@dataclass(frozen=True)
class ServeConfig:
    """What `qaie serve` starts. `models`: anything `qaie.load` takes (none: the shipped model)."""

    models: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    max_upload_mb: float = 50.0
    threads: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise QaieError(f"--port {self.port}: expected 0..65535 (0: any free port)")
        if not self.max_upload_mb > 0:
            raise QaieError(f"--max-upload-mb {self.max_upload_mb:g}: expected a positive size in MB")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)


class QaieServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the loaded models; `url` is where the page is."""

    daemon_threads = True

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.comparer = Comparer(load_models(config.models or None, config.threads))  # once, here
        self.page = PAGE.read_bytes()
        super().__init__((config.host, config.port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def make_server(config: ServeConfig) -> QaieServer:
    """Load the models and bind (port 0: a free one); `serve_forever()` then serves the page.
    A model that cannot be loaded or a port in use is a QaieError."""
    try:
        return QaieServer(config)
    except OSError as err:
        raise QaieError(f"cannot listen on {config.host}:{config.port} ({err.strerror or err})") from err


class UploadTooLarge(Exception):
    """An upload over ServeConfig.max_upload_mb (HTTP 413)."""


class Handler(BaseHTTPRequestHandler):
    server: QaieServer

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/config":
            config = self.server.config
            names = [m.name for m in self.server.comparer.models]
            self._json(
                HTTPStatus.OK,
                {"models": names, "max_upload_bytes": config.max_upload_bytes, "diff_gain": DIFF_GAIN},
            )
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"{path}: no such page"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/api/enhance":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"{url.path}: no such page"})
            return
        query = parse_qs(url.query, keep_blank_values=True)
        name = _filename(query.get("name", ["upload"])[0])
        try:
            data = self._body()
            chosen = self._chosen(query.get("models", ["0"])[0])
            comparison = self.server.comparer.compare(data, name, chosen)
        except UploadTooLarge as err:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": str(err)})
        except QaieError as err:
            print(f"qaie serve: error: {err}", file=sys.stderr)
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        except Exception as err:  # a bug in qaie: say so on the page, keep serving
            traceback.print_exc()
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {err}"})
        else:
            self._json(HTTPStatus.OK, _reply(name, comparison))

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise QaieError("the upload has no valid Content-Length") from None
        limit = self.server.config.max_upload_bytes
        if length > limit:
            self._drain(length)
            raise UploadTooLarge(
                f"the upload is {length / 1e6:.1f} MB, over the {limit / 1e6:g} MB limit "
                "(qaie serve --max-upload-mb)"
            )
        return self.rfile.read(length)

    def _drain(self, length: int) -> None:
        """Read and drop a refused body, so the browser gets the reply, not a reset connection."""
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                return
            length -= len(chunk)

    def _chosen(self, text: str) -> list[int]:
        count = len(self.server.comparer.models)
        try:
            chosen = [int(i) for i in text.split(",")]
        except ValueError:
            chosen = []
        if not 1 <= len(chosen) <= MAX_MODELS_PER_PHOTO or any(not 0 <= i < count for i in chosen):
            raise QaieError(f"models={text!r}: pick one or two of the {count} models, by index")
        return chosen

    def _json(self, status: HTTPStatus, body: dict) -> None:
        self._send(status, json.dumps(body, allow_nan=False).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        """Quiet: errors are printed where they happen, one line each."""


def _reply(name: str, c: Comparison) -> dict:
    h, w = c.photo.pixels.shape[:2]
    reply = {
        "name": name,
        "width": w,
        "height": h,
        "note": c.photo.note,
        "input": png_base64(c.photo.pixels),
        "outputs": [{"name": o.name, "seconds": o.seconds, "png": png_base64(o.pixels)} for o in c.outputs],
    }
    if c.diff is not None:
        identical = math.isinf(c.psnr_db)
        reply |= {
            "diff": png_base64(c.diff),
            "diff_gain": DIFF_GAIN,
            "psnr_db": None if identical else c.psnr_db,
            "identical": identical,
        }
    return reply


def png_base64(pixels: np.ndarray) -> str:
    """(H, W, 3) uint8 as a base64 PNG (lossless: the page shows and downloads these pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _filename(text: str) -> str:
    """The upload's name as errors show it: its last path part, printable, at most 200 chars."""
    name = text.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in name if ch.isprintable())[:200] or "upload"
