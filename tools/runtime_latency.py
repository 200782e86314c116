"""Latency of each deployed file on one photo-sized frame, in this process: every runtime,
`.pte` included (`qaie bench` measures each in a fresh process).

    python tools/runtime_latency.py FILE... [--size 321x481] [--threads 1,2]

Median of 5 runs after 1 warm-up, each through `enhance_image` (what `qaie enhance` does).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from qaie.runtime.litert import enhance_image, parse_counts, parse_size
from qaie.runtime.registry import open_deployed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--size", default="321x481")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    frame = np.random.default_rng(0).integers(0, 256, (*parse_size(args.size), 3), dtype=np.uint8)
    for path in args.files:
        for threads in parse_counts(args.threads, "--threads"):
            model = open_deployed(path, threads)
            times = []
            for i in range(6):
                start = time.perf_counter()
                enhance_image(model, frame)
                if i:
                    times.append((time.perf_counter() - start) * 1000)
            print(f"{path} {args.size} threads {threads}: {np.median(times):.1f} ms", flush=True)


if __name__ == "__main__":
    main()
