"""`qaie serve`: its HTTP API in-process (two models, bad files, the upload limit), and the page
in headless Chromium against a real `qaie serve` process (what the page shows is `qaie.enhance`
of the uploaded photo, pixel for pixel; a corrupt file shows the CLI's error line)."""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from browser import Browser, chromium
from cli_process import qaie_process
from PIL import Image

import qaie
from qaie.errors import QaieError
from qaie.imageio import read_rgb
from qaie.nn.metrics import psnr
from qaie.runtime.models import MODELS_DIR, default_model
from qaie.web.compare import DIFF_GAIN
from qaie.web.server import PAGE, ServeConfig, make_server

FP32 = MODELS_DIR / "qaie-c32-fp32.ckpt"
UPLOAD_LIMIT_MB = 2.0


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 300x200 real photo (JPEG) and files the CLI refuses or converts."""
    root = tmp_path_factory.mktemp("serve")
    photo = root / "coffee.jpg"
    Image.fromarray(skimage.data.coffee()[100:300, 150:450]).save(photo, quality=92)
    data = photo.read_bytes()
    files = {"photo": photo}
    for name, content in {
        "text.jpg": b"not an image\n",
        "truncated.jpg": data[: len(data) // 3],
        "empty.png": b"",
    }.items():
        (root / name).write_bytes(content)
        files[name] = root / name
    Image.new("RGB", (5, 4)).save(root / "tiny.png")
    Image.new("1", (12000, 9000)).save(root / "huge.png")  # 108 MP in a few kB: over the limit
    Image.fromarray(np.full((40, 48), 40000, np.uint16)).save(root / "gray16.png")
    files |= {n: root / n for n in ("tiny.png", "huge.png", "gray16.png")}
    return files


def cli_error(path: Path) -> str:
    """The QaieError line `qaie enhance` prints for `path`, naming the file as the page names it."""
    with pytest.raises(QaieError) as err:
        read_rgb(path)
    return str(err.value).replace(str(path), path.name)


def decode_png(text: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The server in a thread, with the shipped INT8 model and the FP32 checkpoint it came from."""
    config = ServeConfig(models=[str(default_model()), str(FP32)], port=0, max_upload_mb=UPLOAD_LIMIT_MB)
    httpd = make_server(config)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.url
    httpd.shutdown()
    httpd.server_close()


def post(url: str, data: bytes, query: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}api/enhance?{query}", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_two_models_give_their_outputs_difference_and_psnr(server: str, files: dict) -> None:
    photo = files["photo"]
    status, reply = post(server, photo.read_bytes(), "models=0,1&name=coffee.jpg")
    assert status == 200, reply
    a, b = (decode_png(o["png"]) for o in reply["outputs"])
    assert np.array_equal(a, qaie.enhance(photo, default_model()))  # the whole-photo path
    assert np.array_equal(b, qaie.enhance(photo, FP32))
    assert np.array_equal(decode_png(reply["input"]), read_rgb(photo).pixels)
    assert (reply["width"], reply["height"]) == (300, 200)
    diff = np.minimum(np.abs(a.astype(int) - b.astype(int)) * DIFF_GAIN, 255)
    assert np.array_equal(decode_png(reply["diff"]), diff)
    assert diff.any() and not reply["identical"]
    assert reply["psnr_db"] == pytest.approx(float(psnr(a, b)[0]))
    assert [o["name"] for o in reply["outputs"]] == [default_model().name, FP32.name]
    assert all(o["seconds"] > 0 for o in reply["outputs"])


def test_one_model_gives_no_comparison(server: str, files: dict) -> None:
    status, reply = post(server, files["photo"].read_bytes(), "models=1&name=coffee.jpg")
    assert status == 200
    assert [o["name"] for o in reply["outputs"]] == [FP32.name]
    assert "diff" not in reply and "psnr_db" not in reply


@pytest.mark.parametrize("name", ["text.jpg", "truncated.jpg", "empty.png", "tiny.png", "huge.png"])
def test_bad_file_is_400_with_the_clis_line_and_the_server_keeps_serving(
    server: str, files: dict, name: str
) -> None:
    status, reply = post(server, files[name].read_bytes(), f"models=0&name=some/folder/{name}")
    assert (status, reply) == (400, {"error": cli_error(files[name])})
    assert post(server, files["photo"].read_bytes(), "models=0&name=coffee.jpg")[0] == 200


def test_converted_file_says_what_was_converted(server: str, files: dict) -> None:
    status, reply = post(server, files["gray16.png"].read_bytes(), "models=0&name=gray16.png")
    assert status == 200
    assert reply["note"] == read_rgb(files["gray16.png"]).note == "16-bit grayscale: scaled to 8 bits"


def test_upload_over_the_limit_is_413(server: str, files: dict) -> None:
    status, reply = post(server, b"\0" * int(UPLOAD_LIMIT_MB * 1e6 + 1), "models=0&name=big.jpg")
    assert status == 413
    assert reply["error"] == "the upload is 2.0 MB, over the 2 MB limit (qaie serve --max-upload-mb)"


@pytest.mark.parametrize("models", ["2", "0,1,0", "x", ""])
def test_bad_model_choice_is_400(server: str, files: dict, models: str) -> None:
    status, reply = post(server, files["photo"].read_bytes(), f"models={models}&name=coffee.jpg")
    assert status == 400
    assert reply["error"].endswith("pick one or two of the 2 models, by index")


def test_port_in_use_is_one_line(server: str) -> None:
    port = int(server.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(
        QaieError, match=rf"^cannot listen on 127\.0\.0\.1:{port} \(Address already in use\)$"
    ):
        make_server(ServeConfig(port=port))


def test_the_page_loads_nothing_from_the_network() -> None:
    page = PAGE.read_text()
    assert "<script>" in page and "<style>" in page
    assert not re.search(r"(src|href)\s*=|@import|url\(|https?://", page)


# --- the page in a real browser, served by a real `qaie serve` -----------------------------------


def start_cli(*args: str) -> tuple[subprocess.Popen, str]:
    """`qaie serve --port 0` in a fresh process; the URL it prints."""
    proc = qaie_process("serve", "--port", "0", *args)
    for line in proc.stdout:
        if match := re.search(r"open (http://127\.0\.0\.1:\d+/)", line):
            return proc, match.group(1)
    proc.wait()
    raise AssertionError(f"qaie serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")


@pytest.fixture(scope="module")
def page(files: dict) -> Iterator[Browser]:
    """Chromium on the page of `qaie serve` (the shipped model)."""
    chromium()  # skips without it
    proc, url = start_cli()
    try:
        with Browser() as browser:
            browser.call("Page.navigate", {"url": url})
            browser.wait_for("document.body && document.body.dataset.state === 'ready'")
            yield browser
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def upload(browser: Browser, path: Path) -> str:
    """Pick `path` in the page's file input, as a user does; the page's state after it."""
    browser.evaluate("document.body.dataset.state = 'picking'")
    root = browser.call("DOM.getDocument")["root"]["nodeId"]
    node = browser.call("DOM.querySelector", {"nodeId": root, "selector": "#file"})["nodeId"]
    browser.call("DOM.setFileInputFiles", {"nodeId": node, "files": [str(path)]})
    return browser.wait_for(
        "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
    )


def shown_image(browser: Browser, selector: str) -> np.ndarray:
    """The image file an <img> shows, read back through the page (fetch of its blob: URL)."""
    data_url = browser.evaluate(
        f"""fetch(document.querySelector({selector!r}).src).then(r => r.blob()).then(blob =>
              new Promise(done => {{ const f = new FileReader(); f.onload = () => done(f.result);
                                     f.readAsDataURL(blob); }}))"""
    )
    return decode_png(data_url.split(",", 1)[1])


def test_the_page_shows_qaie_enhance_of_the_photo_pixel_for_pixel(page: Browser, files: dict) -> None:
    assert upload(page, files["photo"]) == "done"
    assert np.array_equal(shown_image(page, "#out-0"), qaie.enhance(files["photo"]))
    assert np.array_equal(shown_image(page, ".compare img:first-child"), read_rgb(files["photo"]).pixels)
    assert page.evaluate(
        "document.querySelector('#download-0').href === document.querySelector('#out-0').src"
    )
    assert page.evaluate("document.getElementById('error').hidden")


def test_the_page_shows_the_error_line_of_a_corrupt_file(page: Browser, files: dict) -> None:
    assert upload(page, files["truncated.jpg"]) == "error"
    shown = page.evaluate("document.getElementById('error').textContent")
    assert shown == f"error: {cli_error(files['truncated.jpg'])}"
    assert page.evaluate("document.getElementById('results').children.length") == 0


def test_ctrl_c_stops_cleanly() -> None:
    proc, url = start_cli()
    with urllib.request.urlopen(url + "api/config", timeout=30) as response:
        assert json.load(response)["models"] == [default_model().stem]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out.strip(), err) == (0, "qaie serve: stopped", "")
