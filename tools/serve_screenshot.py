"""The screenshot of `qaie serve` in the README (docs/serve.png): the shipped INT8 model and the
FP32 checkpoint of the same network side by side, with their difference map.

The photo is scikit-image's `chelsea` sample (installed with the package, as the builtin data
is) shot by qaie's synthetic old-phone camera (qaie.data.degrade), so nothing from
../shared goes into the repository. Drives headless Chromium with tests/browser.py's client.

    PYTHONPATH=src python tools/serve_screenshot.py docs/serve.png
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from qaie.data.degrade import CameraModel, degrade
from qaie.imageio import to_uint8
from qaie.runtime.models import MODELS_DIR, default_model
from qaie.web.server import ServeConfig, make_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import Browser  # the tests' DevTools client

CAMERA_SEED = 3
VIEWPORT = (1440, 600)  # width, height: three panels in a row


def old_phone_photo(path: Path) -> Path:
    clean = skimage.data.chelsea().astype(np.float32) / 255  # (300, 451, 3)
    shot = degrade(clean, CameraModel().sample(np.random.default_rng(CAMERA_SEED)))
    Image.fromarray(to_uint8(shot)).save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG to write")
    args = parser.parse_args()
    config = ServeConfig(models=[str(default_model()), str(MODELS_DIR / "qaie-c32-fp32.ckpt")], port=0)
    server = make_server(config)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp, Browser(timeout=300) as browser:
        photo = old_phone_photo(Path(tmp) / "chelsea-old-phone.png")
        width, height = VIEWPORT
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        browser.call("Page.navigate", {"url": server.url})
        browser.wait_for("document.body && document.body.dataset.state === 'ready'")
        root = browser.call("DOM.getDocument")["root"]["nodeId"]
        node = browser.call("DOM.querySelector", {"nodeId": root, "selector": "#file"})["nodeId"]
        browser.call("DOM.setFileInputFiles", {"nodeId": node, "files": [str(photo)]})
        state = browser.wait_for(
            "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
        )
        if state != "done":
            raise SystemExit(browser.evaluate("document.getElementById('error').textContent"))
        browser.wait_for("[...document.images].every(img => img.complete && img.naturalWidth > 0)")
        shot = browser.call("Page.captureScreenshot", {"format": "png"})
    server.shutdown()
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"])))
    image.save(args.out, optimize=True)  # lossless, smaller than Chromium's encoding
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
