"""The dataset card of an export: ``<export>/DATASET_CARD.md`` with its plots under ``<export>/card/``.

:func:`dataset_card` counts the triplets by modality, organ, source, ROI origin and split
(Markdown tables), draws the description-length and ROI-size distributions as PNG histograms
(PIL; no plotting library needed), lists each source's licence and origin, and states the known
limitations: synthetic sources, which backend and model wrote the descriptions and how many
fell back to the embedded captioner, the share of whole-image rows, and the fidelity figures
when given. It returns the Markdown, which the asset also puts in its metadata.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image, ImageDraw, ImageFont

from medtrinity_assets.core.storage import atomic_write_bytes

CARD_FILE = "DATASET_CARD.md"
CARD_DIR = "card"
MAX_TABLE_ROWS = 30
MAX_AREA_ROWS = 200_000
AREA_FLOOR = 1e-4  # ROI-size histogram: log10 bins from this share of the image to 1
BAR = (60, 110, 190)
INK = (30, 34, 40)
GRID = (225, 229, 234)


def _cell(value: Any) -> str:
    s = "—" if value is None or value == "" else str(value)
    return s.replace("|", "\\|").replace("\n", " ")


def _pct(n: int | float, total: int | float) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "—"


def count_table(df: pl.DataFrame, column: str, title: str | None = None) -> str:
    """A Markdown table of the rows per value of ``column`` (count and share), largest first;
    beyond ``MAX_TABLE_ROWS`` values the rest are summed in one row."""
    title = title or column
    if column not in df.columns or df.height == 0:
        return f"*no {title} column*" if column not in df.columns else "*no rows*"
    counts = df.group_by(pl.col(column).cast(pl.String).fill_null("(none)")).len().sort(["len", column], descending=[True, False])
    lines = [f"| {title} | triplets | share |", "|---|---:|---:|"]
    rows = counts.rows()
    for value, n in rows[:MAX_TABLE_ROWS]:
        lines.append(f"| {_cell(value)} | {n} | {_pct(n, df.height)} |")
    if len(rows) > MAX_TABLE_ROWS:
        rest = sum(n for _, n in rows[MAX_TABLE_ROWS:])
        lines.append(f"| *{len(rows) - MAX_TABLE_ROWS} other values* | {rest} | {_pct(rest, df.height)} |")
    return "\n".join(lines)


def description_words(df: pl.DataFrame) -> list[int]:
    """Words per description."""
    if "description" not in df.columns:
        return []
    return df.select(pl.col("description").fill_null("").str.split(" ").list.eval(pl.element().filter(pl.element() != "")).list.len()).to_series().to_list()


def _area(row: Mapping[str, Any]) -> float | None:
    """Share of the image area inside the ROI: the mask's pixels (RLE counts, no decoding), else the box's."""
    if row.get("mask_rle"):
        try:
            rle = json.loads(row["mask_rle"])
            h, w = (int(v) for v in rle["size"])
            return sum(rle["counts"][1::2]) / (h * w) if h * w else None
        except (ValueError, KeyError, TypeError):
            pass
    norm = row.get("bbox_norm")
    if norm is not None and len(norm) == 4:
        return max(0.0, (norm[2] - norm[0]) * (norm[3] - norm[1]))
    return None


def roi_area_fractions(df: pl.DataFrame) -> list[float]:
    """Area fraction of every localised ROI (whole-image rows left out; a seeded sample of
    ``MAX_AREA_ROWS`` of them in a larger export)."""
    cols = [c for c in ("mask_rle", "bbox_norm", "origin") if c in df.columns]
    if "origin" not in cols:
        return []
    local = df.select(cols).filter(pl.col("origin") != "whole_image")
    if local.height > MAX_AREA_ROWS:  # the RLE is parsed per row: a fixed sample keeps the card quick
        local = local.sample(MAX_AREA_ROWS, seed=0)
    return [a for a in (_area(r) for r in local.iter_rows(named=True)) if a is not None]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _nice_step(top: float, ticks: int = 5) -> float:
    raw = max(top, 1e-12) / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _linear_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    step = _nice_step(hi - lo)
    first = math.ceil(lo / step) * step
    return [(first + i * step, f"{first + i * step:g}") for i in range(int((hi - first) / step + 1e-9) + 1)]


def _bin_counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin; values outside the edges fall into the first or last bin."""
    arr = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
    return [int(c) for c in np.histogram(arr, bins=np.asarray(edges, dtype=np.float64))[0]]


def histogram_png(
    values: Sequence[float],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    edges: Sequence[float],
    tick_labels: Sequence[tuple[float, str]] | None = None,
    subtitle: str = "",
    ylabel: str = "triplets",
) -> Path:
    """A histogram of ``values`` over bins ``edges`` (the x axis is linear in bin index, so log
    bins read as a log axis) with axes, ticks, grid lines and titles, written as PNG."""
    W, H, left, right, top, bottom = 760, 440, 78, 24, 70, 72
    counts = _bin_counts(values, edges)
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    f_title, f_text, f_small = _font(20), _font(15), _font(13)
    d.text((left, 14), title, fill=INK, font=f_title)
    d.text((left, 42), subtitle, fill=(90, 98, 108), font=f_small)
    pw, ph = W - left - right, H - top - bottom
    step = _nice_step(max(counts) or 1)
    ymax = step * math.ceil((max(counts) or 1) / step)
    y = 0.0
    while y <= ymax + 1e-9:
        py = top + ph - ph * y / ymax
        d.line([left, py, left + pw, py], fill=GRID, width=1)
        label = f"{y:g}"
        d.text((left - 8 - d.textlength(label, font=f_small), py - 8), label, fill=INK, font=f_small)
        y += step
    bw = pw / len(counts)
    for i, n in enumerate(counts):
        if n:
            d.rectangle([left + i * bw + 1, top + ph - ph * n / ymax, left + (i + 1) * bw - 1, top + ph], fill=BAR)
    d.line([left, top + ph, left + pw, top + ph], fill=INK, width=2)
    d.line([left, top, left, top + ph], fill=INK, width=2)
    lo, hi = edges[0], edges[-1]
    span = len(edges) - 1

    def x_of(v: float) -> float:  # position along the bins (linear within a bin)
        k = max(0, min(span - 1, next((i for i in range(span) if v < edges[i + 1]), span - 1)))
        frac = (v - edges[k]) / ((edges[k + 1] - edges[k]) or 1)
        return left + pw * (k + min(1.0, max(0.0, frac))) / span

    ticks = tick_labels or _linear_ticks(lo, hi)
    for v, label in ticks:
        px = x_of(v)
        d.line([px, top + ph, px, top + ph + 6], fill=INK, width=2)
        d.text((px - d.textlength(label, font=f_small) / 2, top + ph + 9), label, fill=INK, font=f_small)
    d.text((left + pw / 2 - d.textlength(xlabel, font=f_text) / 2, H - 32), xlabel, fill=INK, font=f_text)
    ylab = Image.new("RGB", (140, 22), (255, 255, 255))
    ImageDraw.Draw(ylab).text((0, 2), ylabel, fill=INK, font=f_text)
    img.paste(ylab.rotate(90, expand=True), (6, top + ph // 2 - 70))
    out = Path(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _split_note(df: pl.DataFrame) -> str:
    """How many images and groups appear in more than one split (measured, not assumed)."""
    if "split" not in df.columns or df.height == 0:
        return ""
    found = []
    for key, what in (("image_sha256", "image(s)"), ("group_id", "group(s) (patient, study or image)")):
        if key in df.columns:
            n = df.filter(pl.col(key).is_not_null()).group_by(key).agg(pl.col("split").n_unique().alias("k"))
            shared = n.filter(pl.col("k") > 1).height
            found.append(f"{shared} {what}" + (" **— a leak**" if shared else ""))
    return "\n\nIn more than one split: " + "; ".join(found) + "." if found else ""


def _words_plot(df: pl.DataFrame, folder: Path) -> str:
    words = description_words(df)
    if not words:
        return "*no descriptions*"
    lo, hi = min(words), max(words)
    width = max(1, math.ceil((hi - lo + 1) / 24))
    start = (lo // width) * width
    edges = [start + i * width for i in range(math.ceil((hi + 1 - start) / width) + 1)]
    med = sorted(words)[len(words) // 2]
    histogram_png(words, folder / "description_words.png", title="Description length", xlabel="words per description",
                  edges=edges, subtitle=f"{len(words)} descriptions; min {lo}, median {med}, max {hi} words")
    return (f"![Description length (words)]({CARD_DIR}/description_words.png)\n\n"
            f"Words per description: min {lo}, median {med}, mean {sum(words) / len(words):.1f}, max {hi}.")


def _area_plot(df: pl.DataFrame, folder: Path) -> str:
    areas = roi_area_fractions(df)
    if not areas:
        return "*no localised ROI: every triplet covers the whole image*"
    n_edges = 25
    edges = [AREA_FLOOR ** (1 - i / (n_edges - 1)) for i in range(n_edges)]
    edges[-1] = 1.0 + 1e-9
    ticks = [(1e-4, "0.01%"), (1e-3, "0.1%"), (1e-2, "1%"), (1e-1, "10%"), (1.0, "100%")]
    med = sorted(areas)[len(areas) // 2]
    local = df.filter(pl.col("origin") != "whole_image").height
    sampled = f" (a sample of {local})" if local > len(areas) else ""
    histogram_png([max(a, AREA_FLOOR) for a in areas], folder / "roi_area_fraction.png",
                  title="ROI size", xlabel="share of the image area inside the ROI (log scale)", edges=edges,
                  tick_labels=ticks, ylabel="ROIs",
                  subtitle=f"{len(areas)} localised ROIs{sampled} (whole-image rows left out); median {100 * med:.2f}%")
    small = sum(a < 0.01 for a in areas)
    return (f"![ROI size (area fraction)]({CARD_DIR}/roi_area_fraction.png)\n\n"
            f"ROI area (mask pixels, else box): median {100 * med:.2f}% of the image; {small} ROI(s) "
            f"under 1% ({_pct(small, len(areas))}); whole-image rows are not counted here.")


def _sources_table(df: pl.DataFrame, sources: Sequence[Mapping[str, Any]]) -> str:
    per = dict(df.group_by("source").len().iter_rows()) if "source" in df.columns and df.height else {}
    lines = ["| source | modality | organ | licence | origin | synthetic | triplets |", "|---|---|---|---|---|---|---:|"]
    listed = set()
    for s in sorted(sources, key=lambda s: str(s.get("name"))):
        listed.add(s.get("name"))
        synth = "yes" if s.get("synthetic") else "no"
        lines.append(f"| {_cell(s.get('name'))} | {_cell(s.get('modality'))} | {_cell(s.get('organ'))} | "
                     f"{_cell(s.get('license'))} | {_cell(s.get('origin'))} | {synth} | {per.get(s.get('name'), 0)} |")
    for name in sorted(set(per) - listed):
        lines.append(f"| {_cell(name)} | — | — | *not declared* | *not declared* | — | {per[name]} |")
    return "\n".join(lines)


def _backend_lines(df: pl.DataFrame, backends: pl.DataFrame | None) -> list[str]:
    keys = [c for c in ("backend", "model", "prompt_version") if c in df.columns]
    lines = []
    if keys and df.height:
        lines += ["| " + " | ".join(keys) + " | triplets |", "|" + "---|" * len(keys) + "---:|"]
        for *vals, n in df.group_by(keys).len().sort("len", descending=True).rows():
            lines.append("| " + " | ".join(_cell(v) for v in vals) + f" | {n} |")
        lines.append("")
    if "backend" in df.columns and (df["backend"] == "embedded").any():
        lines.append("- The `embedded` backend is the project's deterministic grounded captioner: it writes each facet "
                     "from measured values (ROI position, size, intensity, texture), metadata and retrieved passages "
                     "with templates. It is not a multimodal LLM and its prose is formulaic.")
    if backends is None:
        lines.append("- Fallbacks to the embedded captioner: not reported to this card.")
        return lines
    if "fallback_reason" not in backends.columns:
        lines.append("- Fallbacks to the embedded captioner: not recorded (caption_batch has no fallback_reason column).")
        return lines
    on = [c for c in ("record_id", "roi_id", "inputs_hash") if c in backends.columns and c in df.columns]
    rows = backends.join(df.select(on).unique(), on=on, how="semi") if on else backends
    reason = pl.col("fallback_reason")
    fell = rows.filter(reason.is_not_null() & (reason != ""))
    lines.append(f"- {fell.height} of {rows.height} exported description(s) ({_pct(fell.height, rows.height)}) were "
                 "written by the embedded captioner because the configured backend's text failed a blocking check.")
    if fell.height:
        top = Counter(r.strip() for t in fell["fallback_reason"].to_list() for r in str(t).split(";") if r.strip())
        lines.append("  Most common reasons: " + "; ".join(f"{_cell(r[:120])} ({n})" for r, n in top.most_common(5)) + ".")
    return lines


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return _cell(v)


def _scalars(d: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in d.items() if not isinstance(v, Mapping | list | tuple)}


def _columns_table(columns: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Scalar figures as rows, one column per variant (or source)."""
    names = list(columns)
    keys = list(dict.fromkeys(k for v in columns.values() for k in _scalars(v)))
    lines = ["| figure | " + " | ".join(_cell(n) for n in names) + " |", "|---|" + "---:|" * len(names)]
    return lines + [f"| {_cell(k)} | " + " | ".join(_fmt(columns[n].get(k)) for n in names) + " |" for k in keys]


def _fidelity_lines(fidelity: Mapping[str, Any] | None) -> list[str]:
    """The fidelity benchmark's figures (``benchmarks/fidelity.py --json``: ``variants`` and
    ``demo`` become tables), or any flat mapping of figures."""
    if not fidelity:
        return ["- Fidelity: no benchmark figures were given to this card (`python benchmarks/fidelity.py --json "
                "<out>/_reports/fidelity.json` measures ROI recall, precision and contradicted claims on images "
                "with planted lesions)."]
    lines: list[str] = []
    for key, title in (("variants", "planted lesions of known truth, per variant"), ("demo", "demo sources with truth")):
        block = fidelity.get(key)
        if isinstance(block, Mapping) and block and all(isinstance(v, Mapping) for v in block.values()):
            lines += [f"- Fidelity benchmark ({title}):", "", *_columns_table(block), ""]
    flat = _scalars(fidelity)
    for key, v in fidelity.items():
        if isinstance(v, Mapping) and key not in ("variants", "demo"):
            flat.update({f"{key}.{k}": x for k, x in _scalars(v).items()})
    if flat or not lines:
        lines += ["- Fidelity figures:", "", "| figure | value |", "|---|---:|",
                  *(f"| {_cell(k)} | {_fmt(v)} |" for k, v in flat.items())]
    return lines


def _limitations(df: pl.DataFrame, sources: Sequence[Mapping[str, Any]], fidelity: Mapping[str, Any] | None,
                 backends: pl.DataFrame | None) -> list[str]:
    n = df.height
    synth = sorted(str(s.get("name")) for s in sources if s.get("synthetic"))
    n_synth = int(df["synthetic"].fill_null(False).sum()) if "synthetic" in df.columns else 0
    lines = [f"- Synthetic sources (generated, no real patient): {', '.join(synth)}; {n_synth} triplet(s) "
             f"({_pct(n_synth, n)}) are synthetic." if synth or n_synth else "- No synthetic source."]
    origin = df["origin"].fill_null("") if "origin" in df.columns else pl.Series([], dtype=pl.String)
    whole = int((origin == "whole_image").sum())
    lines.append(f"- {whole} of {n} triplet(s) ({_pct(whole, n)}) have no localised region (origin `whole_image`): "
                 "the whole image is the ROI and the region facets describe the whole image.")
    derived = int((origin.str.starts_with("expert:") | (origin == "classical")).sum())
    if derived:
        lines.append(f"- {derived} ROI(s) ({_pct(derived, n)}) come from an expert model or the classical "
                     "segmenter (origin `expert:*` / `classical`), not from a source's annotation.")
    lines += ["", "### Descriptions", "", *_backend_lines(df, backends), "", *_fidelity_lines(fidelity)]
    return lines


def dataset_card(
    df: pl.DataFrame,
    export_root: str | Path,
    *,
    sources: Sequence[Mapping[str, Any]],
    fidelity: Mapping[str, Any] | None = None,
    backends: pl.DataFrame | None = None,
) -> str:
    """Write ``<export_root>/DATASET_CARD.md`` and its plots under ``<export_root>/card/``; returns the Markdown.

    ``df`` is the export's triplets table (``medtrinity_dataset``); ``sources`` the registry's
    declarations (dicts with ``name, license, origin, synthetic, modality, organ``);
    ``fidelity`` the fidelity benchmark's figures (its JSON report, or any mapping of figures);
    ``backends`` the caption_batch rows (``backend, model, fallback_reason``, keyed by
    ``record_id, roi_id, inputs_hash``) to count the fallbacks among the exported descriptions.
    """
    root = Path(export_root)
    folder = root / CARD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    n = df.height
    images = df["image_sha256"].n_unique() if "image_sha256" in df.columns else 0
    n_src = df["source"].n_unique() if "source" in df.columns else 0
    parts = [
        "# MedTrinity-style triplets: dataset card",
        f"{n} image–ROI–description triplet(s) on {images} image(s) from {n_src} source(s). Each row of "
        "`triplets.parquet` holds the original image (`image_file`, under `images/`, nothing drawn on it), the ROI "
        "geometry (`bbox_xyxy` in pixels, `bbox_norm`, `mask_rle` as COCO uncompressed RLE), the description with its "
        "five facets, the split and the provenance (`record_id`, `roi_id`, `inputs_hash`).",
        "## Counts",
        "### By modality\n\n" + count_table(df, "modality"),
        "### By organ\n\n" + count_table(df, "organ"),
        "### By source\n\n" + count_table(df, "source"),
        "### By ROI origin\n\n" + count_table(df, "origin", "ROI origin"),
        "### By split\n\n" + count_table(df, "split") + _split_note(df),
        "## Distributions",
        "### Description length\n\n" + _words_plot(df, folder),
        "### ROI size\n\n" + _area_plot(df, folder),
        "## Sources: licence and origin",
        _sources_table(df, sources),
        "## Known limitations",
        "\n".join(_limitations(df, sources, fidelity, backends)),
    ]
    md = "\n\n".join(parts) + "\n"
    atomic_write_bytes(root / CARD_FILE, md.encode("utf-8"))
    return md
