"""Training and evaluation samples: an image, a question, an answer. From the export's LLaVA
JSON (the conversations LLaVA training reads) or from a VQA set's table; images decoded safely
and stretched to a square (not cropped, not padded), so the normalised box a question gives
still points at the same pixels."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from medtrinity_assets.export.formats import iter_json_array

IMAGE_FORMATS = ("PNG", "JPEG", "TIFF")
MAX_PIXELS = 64_000_000


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    question: str
    answer: str


def llava_samples(json_path: str | Path, image_root: str | Path) -> list[Sample]:
    """The single-turn conversations of an exported ``llava/<split>.json`` (image paths relative
    to ``image_root``, the export folder)."""
    root = Path(image_root)
    out = []
    for record in iter_json_array(json_path):
        turns = record["conversations"]
        if len(turns) < 2 or turns[0]["from"] != "human" or turns[1]["from"] != "gpt":
            raise ValueError(f"{json_path}: record {record.get('id')} is not a human/gpt conversation")
        question = turns[0]["value"].replace("<image>", "").strip()
        out.append(Sample(str(record["id"]), root / record["image"], question, turns[1]["value"]))
    return out


def vqa_samples(df: pl.DataFrame, split: str | Iterable[str]) -> list[Sample]:
    """The questions of a VQA table in ``split`` (one name or several)."""
    splits = [split] if isinstance(split, str) else list(split)
    rows = df.filter(pl.col("split").is_in(splits)).sort("question_id")
    return [Sample(r["question_id"], Path(r["image_file"]), r["question"], r["answer"])
            for r in rows.iter_rows(named=True)]


def load_image(path: Path) -> Any:
    """An RGB PIL image stretched to a square (format whitelist, pixel limit before decoding)."""
    from PIL import Image

    with Image.open(path, formats=list(IMAGE_FORMATS)) as im:
        if im.width * im.height > MAX_PIXELS:
            raise ValueError(f"{path}: {im.width}x{im.height} exceeds {MAX_PIXELS} pixels")
        rgb = im.convert("RGB")
    side = max(rgb.size)
    return rgb if rgb.width == rgb.height else rgb.resize((side, side), Image.Resampling.BILINEAR)
