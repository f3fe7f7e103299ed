"""The transformers_local captioner on a real (tiny, randomly initialised) LLaVA read from a
local folder: real processor, chat template, vision tower and batched generation."""

from __future__ import annotations

import dataclasses
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtrinity_assets.captioning import make_captioner
from medtrinity_assets.captioning.backends.base import CaptionerConfigError
from medtrinity_assets.captioning.samples import realistic_inputs
from medtrinity_assets_tests.sources_builders import SKIMAGE_DATA
from medtrinity_assets_tests.tiny_vlm import write_tiny_llava


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    return write_tiny_llava(tmp_path_factory.mktemp("vlm") / "tiny-llava")


def _items_with_images(tmp_path: Path, n: int):
    png = tmp_path / "camera.png"
    Image.open(SKIMAGE_DATA / "camera.png", formats=["PNG"]).save(png)
    return [dataclasses.replace(it, image_path=str(png), out_root=None) for it in realistic_inputs(n)]


def test_tiny_llava_generates_in_batches_with_the_images(tiny_llava, tmp_path):
    cap = make_captioner(
        {"backend": "transformers_local", "model_path": str(tiny_llava), "batch_size": 2, "max_tokens": 12}
    )
    cap.load()
    images_seen: list[int] = []
    cap._model.model.vision_tower.register_forward_hook(lambda m, args, out: images_seen.append(args[0].shape[0]))
    items = _items_with_images(tmp_path, 3)
    original = np.asarray(Image.open(tmp_path / "camera.png", formats=["PNG"])).copy()

    results = cap.caption(items)

    assert len(results) == 3
    for r in results:
        # random weights write no facet JSON: each item is reported, with the model's words kept
        assert r.status in ("ok", "failed") and r.raw
        if r.status == "failed":
            assert "after one repair" in r.error and "--- repair reply ---" in r.raw
    # first round: a batch of 2 then 1, each conversation with its outlined image
    assert images_seen[:1] == [2] and 1 in images_seen and sum(images_seen) >= 3
    assert np.array_equal(np.asarray(Image.open(tmp_path / "camera.png", formats=["PNG"])), original)
    assert cap.params["temperature"] == 0.1 and cap.params["max_new_tokens"] == 12
    assert cap._processor.tokenizer.padding_side == "left"


class _Tripwire:
    """Unpickling this creates ``marker``: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_weights_are_refused_never_unpickled(tiny_llava, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llava, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled.txt"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": _Tripwire(marker)}, f)
    cap = make_captioner({"backend": "transformers_local", "model_path": str(folder)})
    with pytest.raises(CaptionerConfigError, match="pytorch_model.bin would have to be unpickled, which is refused"):
        cap.load()
    assert not marker.exists()
