"""The experiment report: results.json + training logs + sample images -> report.html and report.md.

Everything the report shows is read from the run folder, so `qaie report DIR` rebuilds it
without re-running anything. The HTML embeds its figures (base64) and stands alone; the
Markdown links the same figures from `DIR/figures/`.

Run folder layout (written by `qaie demo`):
    results.json                  the numbers (schema: qaie.experiment.results)
    fp32/metrics.csv, qat/metrics.csv   per-epoch training logs
    samples/<name>/<model>.png    input, fp32, ptq_int8, qat_int8, target for a few test images
"""

from __future__ import annotations

import base64
import csv
import html
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or CI
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from qaie.atomic import atomic_path, write_text_atomic
from qaie.errors import QaieError
from qaie.experiment.results import MODELS, read_results

LABELS = {
    "fp32": "FP32",
    "ptq_int8": "PTQ INT8",
    "qat_int8": "QAT INT8",
    "input": "input",
    "target": "target",
}
COLORS = {"fp32": "#4c72b0", "ptq_int8": "#dd8452", "qat_int8": "#55a868"}
SAMPLE_COLUMNS = ("input", *MODELS, "target")
ERROR_GAIN = 4  # error maps show |output - target| x 4 so small colour shifts become visible


@dataclass(frozen=True)
class ReportResult:
    html: Path
    markdown: Path
    figures: list[Path]


def build_report(run_dir: Path) -> ReportResult:
    """Render every figure from the run folder, then write report.html and report.md atomically."""
    results = read_results(run_dir)
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)

    sections: list[tuple[str, str, list[Path]]] = []  # (title, caption, figures)
    curves = _plot_training_curves(run_dir, fig_dir)
    if curves:
        sections.append(
            (
                "Training",
                "Training loss and validation PSNR per epoch; QAT fine-tunes the FP32 weights.",
                [curves],
            )
        )
    sections.append(
        (
            "Quality",
            "PSNR and SSIM of each deployed `.tflite` on the test split.",
            [_plot_quality(results, fig_dir)],
        )
    )
    grids = _plot_sample_grids(run_dir, fig_dir)
    if grids:
        caption = (
            f"Before/after on test images: full view, a zoomed crop, and |output − target| × {ERROR_GAIN}. "
            "Colour shifts from quantization show up in the error maps."
        )
        sections.append(("Before / after", caption, grids))
    if results.get("sensitivity"):
        caption = "PSNR lost when only that layer is quantized (PTQ), worst first."
        sections.append(
            ("Per-layer quantization sensitivity", caption, [_plot_sensitivity(results, fig_dir)])
        )
    latency = _plot_latency(results, fig_dir)
    if latency:
        caption = (
            "Median LiteRT latency per frame on this machine's CPU: a frame of an exported size is one "
            "pass; a larger one is the whole-photo path in windows (or tiles), as `qaie enhance` runs it."
        )
        sections.append(("Latency", caption, [latency]))

    table_md, table_html = _results_table(results)
    figures = [f for _, _, figs in sections for f in figs]
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    write_text_atomic(md_path, _markdown(results, table_md, sections, run_dir))
    write_text_atomic(html_path, _html(results, table_html, sections))
    return ReportResult(html=html_path, markdown=md_path, figures=figures)


# --- tables -------------------------------------------------------------------------------------


def _fmt(value: object, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "–"


def _latency_cell(entry: dict) -> str:
    """The largest measured size at the most threads: the headline latency of a model, named
    by what was timed (one pass of an exported size, or the whole photo in windows)."""
    latency = entry.get("latency_ms") or {}
    if not latency:
        return "–"
    size = max(latency, key=lambda s: int(s.split("x")[0]) * int(s.split("x")[1]))
    threads = max(latency[size], key=int)
    runs_as = (entry.get("latency_runs_as") or {}).get(size) or {}
    return f"{latency[size][threads]:.0f} ms {_timed(size, runs_as)}, {threads} thr"


def _timed(size: str, runs_as: dict) -> str:
    """What a latency of a frame of `size` timed: results[name]["latency_runs_as"][size]."""
    mode, tile, calls = runs_as.get("mode"), runs_as.get("tile"), runs_as.get("calls")
    if mode == "direct":
        return f"one pass @ {size}"
    if mode == "padded":
        return f"one pass @ {tile} (padded from {size})"
    if mode == "tiled":
        return f"@ {size} in {calls} tiles of {tile}"
    if mode == "stages":
        return f"whole photo @ {size} in {tile} windows"
    return f"@ {size}"  # a results.json from before latency_runs_as


def _results_table(results: dict) -> tuple[str, str]:
    header = ["model", "PSNR dB", "SSIM", "ΔPSNR vs FP32", "parity dB", "float ops", "size", "latency"]
    rows = [
        ["input (degraded)", _fmt(results.get("input_psnr"), 2), _fmt(results.get("input_ssim"), 4)]
        + ["–"] * 5
    ]
    for name in MODELS:
        e = results.get(name)
        if not e:
            continue
        rows.append(
            [
                LABELS[name],
                _fmt(e.get("psnr"), 2),
                _fmt(e.get("ssim"), 4),
                _fmt(e.get("delta_psnr_vs_fp32"), 2),
                "identical" if e.get("parity_max_abs_lsb") == 0 else _fmt(e.get("parity_psnr"), 1),
                str(e.get("float_ops", "–")),
                f"{e['file_bytes'] / 1024:.0f} KiB" if "file_bytes" in e else "–",
                _latency_cell(e),
            ]
        )
    md = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return md, f'<table id="results"><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>'


def _context_lines(results: dict) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in (results.get("versions") or {}).items())
    return [
        f"Data: `{results.get('data', '?')}` (test split), seed {results.get('seed', '?')}.",
        f"Network: width {results.get('width', '?')}, {results.get('params', '?'):,} parameters, "
        f"{_fmt(results.get('macs_per_pixel'), 0)} MACs per pixel."
        if isinstance(results.get("params"), int)
        else "",
        "Metrics: " + results.get("convention", "PSNR/SSIM on RGB in [0, 1], Gaussian SSIM sigma 1.5."),
        f"Versions: {versions}." if versions else "",
    ]


# --- figures ------------------------------------------------------------------------------------


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _read_curve(path: Path) -> dict[str, list[float]]:
    """Per-epoch columns of a training metrics CSV (rows without a value are skipped)."""
    columns: dict[str, list[float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value not in ("", None):
                    try:
                        columns.setdefault(key, []).append(float(value))
                    except ValueError:
                        continue
    return columns


def _plot_training_curves(run_dir: Path, fig_dir: Path) -> Path | None:
    runs = [(name, run_dir / name / "metrics.csv") for name in ("fp32", "qat")]
    runs = [(name, path) for name, path in runs if path.is_file()]
    if not runs:
        return None
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(10, 3.6))
    offset = 0.0  # QAT epochs continue after the FP32 ones
    for name, path in runs:
        curve = _read_curve(path)
        color = COLORS["fp32" if name == "fp32" else "qat_int8"]
        label = "FP32" if name == "fp32" else "QAT (fake-quant)"
        for ax, key in ((ax_loss, "train_loss"), (ax_psnr, "val_psnr")):
            epochs = curve.get("epoch", [])
            values = curve.get(key, [])
            n = min(len(epochs), len(values))
            if n:
                ax.plot([e + offset for e in epochs[:n]], values[:n], "o-", ms=3, color=color, label=label)
        offset += max(curve.get("epoch", [0]))  # metrics.csv counts epochs from 1
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ax_psnr.set(xlabel="epoch", ylabel="PSNR dB", title="Validation PSNR")
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, fig_dir / "training_curves.png")


def _plot_quality(results: dict, fig_dir: Path) -> Path:
    present = [m for m in MODELS if results.get(m)]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, base_key, unit in (
        (axes[0], "psnr", "input_psnr", "dB"),
        (axes[1], "ssim", "input_ssim", ""),
    ):
        values = [results[m].get(key, np.nan) for m in present]
        bars = ax.bar([LABELS[m] for m in present], values, color=[COLORS[m] for m in present])
        ax.bar_label(bars, fmt="%.3f" if key == "ssim" else "%.2f", padding=2)
        if isinstance(results.get(base_key), int | float):
            ax.axhline(results[base_key], color="gray", ls="--", label="input (degraded)")
            ax.legend(loc="lower right")
        finite = [
            v for v in [*values, results.get(base_key)] if isinstance(v, int | float) and np.isfinite(v)
        ]
        if finite:
            lo, hi = min(finite), max(finite)
            pad = (hi - lo) * 0.3 + (0.5 if key == "psnr" else 0.01)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set(title=f"{key.upper()} {unit}".strip())
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, fig_dir / "quality.png")


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _zoom_box(target: np.ndarray, size: int) -> tuple[int, int, int]:
    """The size x size crop with the most detail (highest gradient energy): where differences show."""
    gray = target.mean(axis=2)
    energy = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1, :]
    h, w = energy.shape
    size = min(size, h, w)
    step = max(size // 2, 1)
    best = max(
        (
            (energy[y : y + size, x : x + size].sum(), y, x)
            for y in range(0, h - size + 1, step)
            for x in range(0, w - size + 1, step)
        ),
        default=(0.0, 0, 0),
    )
    return best[1], best[2], size


def _plot_sample_grids(run_dir: Path, fig_dir: Path) -> list[Path]:
    figures = []
    sample_root = run_dir / "samples"
    for sample in sorted(p for p in sample_root.glob("*") if p.is_dir()) if sample_root.is_dir() else []:
        images = {
            c: _load_rgb(sample / f"{c}.png") for c in SAMPLE_COLUMNS if (sample / f"{c}.png").is_file()
        }
        if "target" not in images:
            continue
        cols = [c for c in SAMPLE_COLUMNS if c in images]
        y, x, size = _zoom_box(images["target"], max(32, min(images["target"].shape[:2]) // 3))
        fig, axes = plt.subplots(3, len(cols), figsize=(2.4 * len(cols), 7.4), squeeze=False)
        for j, c in enumerate(cols):
            img = images[c]
            axes[0, j].imshow(img)
            axes[0, j].add_patch(plt.Rectangle((x, y), size, size, fill=False, ec="yellow", lw=1.2))
            axes[0, j].set_title(LABELS[c], fontsize=9)
            axes[1, j].imshow(img[y : y + size, x : x + size], interpolation="nearest")
            if c == "target":
                axes[2, j].set_facecolor("black")
            else:
                err = np.clip(np.abs(img - images["target"]) * ERROR_GAIN, 0, 1)
                axes[2, j].imshow(err[y : y + size, x : x + size], interpolation="nearest")
                axes[2, j].set_title(f"error ×{ERROR_GAIN}", fontsize=8)
            for i in range(3):
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
        fig.suptitle(sample.name, fontsize=10)
        figures.append(_save(fig, fig_dir / f"sample_{sample.name}.png"))
    return figures


def _plot_sensitivity(results: dict, fig_dir: Path) -> Path:
    rows = sorted(results["sensitivity"], key=lambda r: r["psnr_drop"], reverse=True)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.2))
    ax.barh([r["layer"] for r in rows][::-1], [r["psnr_drop"] for r in rows][::-1], color=COLORS["ptq_int8"])
    ax.set(xlabel="PSNR drop vs FP32 (dB), only this layer quantized", title="Per-layer PTQ sensitivity")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, fig_dir / "sensitivity.png")


def _plot_latency(results: dict, fig_dir: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    plotted = False
    for name in MODELS:
        latency = (results.get(name) or {}).get("latency_ms") or {}
        by_threads: dict[str, list[tuple[float, float]]] = {}
        for size, per_thread in latency.items():
            h, w = (int(v) for v in size.split("x"))
            for threads, ms in per_thread.items():
                by_threads.setdefault(threads, []).append((h * w / 1e6, ms))
        for threads, points in sorted(by_threads.items()):
            points.sort()
            style = "o-" if threads == max(by_threads, key=int) else "o--"
            ax.plot(
                *zip(*points, strict=True), style, color=COLORS[name], label=f"{LABELS[name]}, {threads} thr"
            )
            plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set(xlabel="megapixels per frame", ylabel="median latency (ms)", title="Latency vs size", yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, fig_dir / "latency.png")


# --- documents ----------------------------------------------------------------------------------


def _markdown(results: dict, table: str, sections: list[tuple[str, str, list[Path]]], run_dir: Path) -> str:
    lines = ["# qaie report: FP32 vs PTQ INT8 vs QAT INT8, measured on the deployed `.tflite`", ""]
    lines += [line for line in _context_lines(results) if line] + ["", table, ""]
    for title, caption, figs in sections:
        lines += [f"## {title}", "", caption, ""]
        lines += [f"![{title}]({f.relative_to(run_dir).as_posix()})" for f in figs] + [""]
    return "\n".join(lines)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# The page reports whether its images decoded (data-images-loaded / data-images-total), so a
# headless browser check can read it from the DOM.
_HTML_CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
});
</script>"""

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}
figcaption{color:#555;font-size:.9em}code{background:#f3f3f3;padding:0 3px}"""


def _html(results: dict, table: str, sections: list[tuple[str, str, list[Path]]]) -> str:
    context = "".join(
        f"<p>{html.escape(line).replace('`', '')}</p>" for line in _context_lines(results) if line
    )
    body = [f"<h1>qaie report: FP32 vs PTQ INT8 vs QAT INT8</h1>{context}<h2>Results</h2>{table}"]
    for title, caption, figs in sections:
        imgs = "".join(f'<img src="{_data_uri(f)}" alt="{html.escape(f.stem)}">' for f in figs)
        body.append(
            f"<h2>{html.escape(title)}</h2><figure>{imgs}<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>qaie report</title>'
        f"<style>{_CSS}</style>{_HTML_CHECK}</head><body>{''.join(body)}</body></html>\n"
    )


# --- the README's before/after figure ---------------------------------------------------------------


def before_after_figure(
    out: Path, model: Path | None = None, *, data: str = "builtin", split: str = "test", images: int = 3
) -> Path:
    """Degraded input | enhanced | target for the first `images` pairs of `data` (whole images),
    enhanced by the deployed model (default: the shipped one), with each image's PSNR.

    Made from the builtin photos by default, so the figure can live in the repository (photos
    from ../shared/data must not)."""
    import torch

    from qaie.data.datasets import make_dataset
    from qaie.imageio import to_uint8
    from qaie.nn.metrics import psnr
    from qaie.quant.predict import open_model
    from qaie.runtime.litert import enhance_image
    from qaie.runtime.models import default_model

    if images < 1:
        raise QaieError(f"--images must be at least 1, got {images}")
    model = Path(model) if model else default_model()
    net = open_model(model)
    dataset = make_dataset(data, split, crop=None, limit=images)
    rows = len(dataset)
    fig, axes = plt.subplots(rows, 3, figsize=(10, 2.6 * rows + 0.4), squeeze=False)
    for i in range(rows):
        x, y = dataset[i]  # (3, H, W) in [0, 1]
        pixels = to_uint8(x.permute(1, 2, 0).numpy())
        enhanced = torch.from_numpy(enhance_image(net, pixels)).permute(2, 0, 1).float() / 255
        for j, (title, img) in enumerate((("input", x), ("qaie", enhanced), ("target", y))):
            label = title if title == "target" else f"{title}  {float(psnr(img[None], y[None])):.2f} dB"
            axes[i, j].imshow(img.permute(1, 2, 0).numpy())
            axes[i, j].set_title(label if i == 0 or title != "target" else "", fontsize=9)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    fig.suptitle(f"{model.name} on {data} {split} (simulated old-phone input)", fontsize=10)
    return _save(fig, Path(out))
