"""A large photo through `qaie serve`'s API (docs/serve.md, "Measured"): the model's time, the
whole request's, and whether the page's output equals `qaie.enhance` of the same file.

The photo is scikit-image's astronaut resized to WxH and saved as JPEG (no ../shared data).

    PYTHONPATH=src python tools/serve_large_photo.py [--size 4000x3000] [--model M]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import time
import urllib.request

import numpy as np
import skimage.data
from PIL import Image

import qaie
from qaie.web.server import ServeConfig, make_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4000x3000", help="WxH of the photo (default 4000x3000)")
    parser.add_argument("--model", help="anything qaie.load takes (default: the shipped model)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.BICUBIC).save(
        buffer, format="JPEG", quality=92
    )
    photo = buffer.getvalue()
    server = make_server(ServeConfig(models=[args.model] if args.model else [], port=0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    request = urllib.request.Request(f"{server.url}api/enhance?models=0&name=photo.jpg", photo, method="POST")
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as response:
        body = response.read()
    request_s = time.perf_counter() - start
    server.shutdown()
    output = json.loads(body)["outputs"][0]
    shown = np.array(Image.open(io.BytesIO(base64.b64decode(output["png"]))))
    expected = qaie.enhance(Image.open(io.BytesIO(photo)), server.comparer.models[0].model)
    print(
        json.dumps(
            {
                "size": f"{width}x{height}",
                "upload_mb": round(len(photo) / 1e6, 2),
                "reply_mb": round(len(body) / 1e6, 2),
                "model_s": round(output["seconds"], 2),
                "request_s": round(request_s, 2),
                "equal_to_qaie_enhance": bool(np.array_equal(shown, expected)),
            }
        )
    )


if __name__ == "__main__":
    main()
