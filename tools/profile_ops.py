"""Per-op time profile of a .tflite in the LiteRT interpreter, from CPU samples (docs/performance.md).

ai-edge-litert 2.3.0 has no per-op profiler reachable from Python: the interpreter wrapper
exposes none, and the CompiledModel's profiler (`LiteRtCompiledModelGetProfiler`) is only in
the C API, switched on by runtime options the Python wrapper does not pass. Its kernels are not
stripped, though, so Linux `perf` names the function each sample falls in: XNNPACK's
micro-kernels (`xnn_qs8_qc8w_igemm_...` is a convolution) and TFLite's own kernels
(`tflite::reference_ops::ResizeNearestNeighbor`), which run outside XNNPACK. This script
loads the model, runs it once untimed, then samples only the timed runs (perf's control FIFO)
and sums the samples by op.

    python tools/profile_ops.py MODEL.tflite [--threads 1] [--runs 3] [--json OUT]

Needs `perf` with perf_event_paranoid <= 2 (user-space sampling of one's own processes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# symbol pattern -> op; first match wins (XNNPACK micro-kernel names say the op they compute)
CATEGORIES: list[tuple[str, str]] = [
    (r"qs8_qc8w_igemm|xnn_compute_igemm", "CONV_2D 3x3 (XNNPACK igemm)"),
    (r"qs8_qc8w_gemm|xnn_compute_gemm", "CONV_2D 1x1 (XNNPACK gemm)"),
    (r"dwconv", "DEPTHWISE_CONV_2D 1x1 (XNNPACK)"),
    (r"SquaredDifference|BroadcastBinaryFunction", "SQUARED_DIFFERENCE (TFLite, not delegated)"),
    (r"ResizeNearestNeighbor", "RESIZE_NEAREST_NEIGHBOR (TFLite, not delegated)"),
    (r"QuantizedReluX", "RELU / RELU_0_TO_1 (TFLite, not delegated)"),
    (r"MultiplyByQuantizedMultiplier", "requantize helper of the TFLite kernels above"),
    (r"[Rr]sqrt", "RSQRT (TFLite)"),
    (r"rdsum|rsum|reduce", "MEAN (XNNPACK rdsum)"),
    (r"vadd|vsub", "ADD / SUB (XNNPACK)"),
    (r"vmul", "MUL (XNNPACK)"),
    (r"vlrelu", "LEAKY_RELU (XNNPACK)"),
    (r"x8_lut|vtanh", "TANH (XNNPACK table)"),
    (r"maxpool", "MAX_POOL_2D (XNNPACK)"),
    (r"pad", "PAD (XNNPACK)"),
    (r"copy|memmove|memcpy|transpose", "copies: CONCATENATION, RESHAPE, partition edges"),
    (r"univector|elementwise|pthreadpool", "XNNPACK dispatch, thread-pool wait"),
    (r"^\[k\]|kallsyms", "kernel"),
]

CHILD = """
import os, sys, time
import numpy as np
from qaie.runtime.litert import TFLiteModel
path, threads, runs, ctl = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = TFLiteModel(path, num_threads=threads)
size = model.sizes[0]
sig = model.signatures[size]
frame = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
feed = {sig.input_name: sig.input.encode(frame)[None]}
runner = model._runners[size]
runner(**feed)  # warm-up: allocation, XNNPACK weight packing
with open(ctl, "w") as f:
    f.write("enable\\n")
times = []
cpu_start = time.process_time()
for _ in range(runs):
    start = time.perf_counter()
    runner(**feed)
    times.append(time.perf_counter() - start)
with open(ctl, "w") as f:
    f.write("disable\\n")
print("CPU", (time.process_time() - cpu_start) / runs)
print("TIMES", *times)
"""


def classify(symbol: str) -> str:
    for pattern, name in CATEGORIES:
        if re.search(pattern, symbol):
            return name
    return "other (interpreter, Python)"


def profile(model: Path, threads: int, runs: int, freq: int) -> dict:
    """Sample `runs` timed runs of `model`; returns times and per-op sample shares."""
    with tempfile.TemporaryDirectory() as tmp:
        ctl, data = os.path.join(tmp, "ctl"), os.path.join(tmp, "perf.data")
        os.mkfifo(ctl)
        cmd = ["perf", "record", "-q", "-F", str(freq), "-D", "-1", "--control", f"fifo:{ctl}", "-o", data]
        cmd += ["--", sys.executable, "-c", CHILD, str(model), str(threads), str(runs), ctl]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        cpu_ms = 1000 * float(next(x for x in proc.stdout.splitlines() if x.startswith("CPU")).split()[1])
        times = [
            float(t) * 1000
            for t in next(x for x in proc.stdout.splitlines() if x.startswith("TIMES")).split()[1:]
        ]
        report = subprocess.run(
            ["perf", "report", "-i", data, "--no-children", "--sort", "sym", "--stdio", "-F", "overhead,sym"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    shares: dict[str, float] = {}
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.*)$", line)
        if m:
            op = classify(m.group(2).strip())
            shares[op] = shares.get(op, 0.0) + float(m.group(1))
    times.sort()
    return {"model": str(model), "threads": threads, "runs": runs, "median_ms": times[len(times) // 2],
            "cpu_ms_per_frame": cpu_ms,
            "times_ms": times, "load_avg": os.getloadavg(), "shares_percent": shares}  # fmt: skip


def markdown(result: dict) -> str:
    """Op, share of CPU samples and CPU-milliseconds a frame (share x the process's CPU time
    over the timed runs, all threads, divided by the runs)."""
    cpu_ms = result["cpu_ms_per_frame"]
    rows = sorted(result["shares_percent"].items(), key=lambda kv: -kv[1])
    lines = ["| op (kernel) | share of samples | CPU ms / frame |", "|---|---|---|"]
    lines += [f"| {op} | {pct:.2f}% | {pct / 100 * cpu_ms:.0f} |" for op, pct in rows if pct >= 0.05]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--freq", type=int, default=499, help="samples a second (default 499)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    start = time.time()
    result = profile(args.model, args.threads, args.runs, args.freq)
    print(f"{args.model}: {args.threads} threads, median {result['median_ms']:.0f} ms over {args.runs} runs, "
          f"{result['cpu_ms_per_frame']:.0f} CPU ms a frame, "
          f"load average {result['load_avg'][0]:.2f} ({time.time() - start:.0f} s)")  # fmt: skip
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
