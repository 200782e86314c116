"""How close `qaie enhance` gets to the network's whole-photo output (README, "Whole photos").

For each photo: the deployed .tflite with its stage signatures (whole-photo output in windows),
the same file tiled with each tile's own statistics (what qaie did before; its enhance_512x512
signature), and the checkpoint on the whole photo in one pass (the reference, `qaie enhance
--model CKPT --tile none`). Prints one JSON line per photo, then the summary.

    python tools/wholephoto_fidelity.py MODEL.tflite REFERENCE.ckpt PHOTO... [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from qaie.imageio import read_rgb
from qaie.quant.predict import open_model
from qaie.runtime.litert import TFLiteModel, enhance_image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float(10 * np.log10(255**2 / mse)) if mse else float("inf")


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("reference")
    parser.add_argument("photos", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = TFLiteModel(args.model, args.threads)
    stages = model.stages
    assert stages is not None, f"{args.model} has no stage signatures"
    reference = open_model(args.reference, whole=True)
    rows = []
    for path in args.photos:
        pixels = read_rgb(path).pixels
        after, after_s = timed(enhance_image, model, pixels)
        model.stages = None  # the same file, tile by tile
        before, before_s = timed(enhance_image, model, pixels, tile=(512, 512))
        model.stages = stages
        ref, ref_s = timed(enhance_image, reference, pixels)
        row = {
            "photo": path,
            "size": "x".join(map(str, pixels.shape[1::-1])),
            "tiles_psnr": psnr(before, ref),
            "stages_psnr": psnr(after, ref),
            "tiles_max_lsb": int(np.abs(before.astype(int) - ref).max()),
            "stages_max_lsb": int(np.abs(after.astype(int) - ref).max()),
            "tiles_s": before_s,
            "stages_s": after_s,
            "reference_s": ref_s,
            "enhancement_psnr": psnr(pixels, ref),  # how much the reference changes the photo
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {
        key: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
        for key in rows[0]
        if key not in ("photo", "size")
        for v in [[r[key] for r in rows]]
    }
    print(json.dumps({"photos": len(rows), **summary}), flush=True)


if __name__ == "__main__":
    main()
