"""Expert grounding models: honest comparison with the classical fallback, safe weight loading."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.segmentation import (
    ExpertConfig,
    ExpertIntegrityError,
    ExpertLoadError,
    build_network,
    classical_segment,
    collect_training_samples,
    dice,
    generate_phantoms,
    load_expert,
    load_expert_for,
    save_expert,
    train_expert,
)

TINY = ExpertConfig(image_size=64, epochs=10, batch_size=8, learning_rate=2e-2, channels=(16, 32, 64))


@pytest.fixture(scope="module")
def trained():
    train = generate_phantoms(40, 64, seed=1)
    return train_expert(train, modality="CT", config=TINY, seed=0, training_sources={"phantoms": 40})


def test_expert_beats_classical_on_held_out_phantoms(trained):
    held_out = generate_phantoms(16, 64, seed=1234)  # a different seed: unseen images
    images = [im for im, _ in held_out]
    truth = [m for _, m in held_out]
    expert_dice = np.mean(
        [dice(p, t) for p, t in zip(trained.predictor().predict(images), truth, strict=True)]
    )
    classical_dice = np.mean(
        [dice(classical_segment(im, "CT"), t) for im, t in zip(images, truth, strict=True)]
    )
    assert expert_dice > 0.6
    assert expert_dice > classical_dice + 0.2
    m = trained.metrics
    assert m["n_train"] + m["n_val"] == 40 and m["n_val"] == 8
    assert m["dice"] > m["classical_dice"]
    # without the bias field the same objects are easy for Otsu: the fallback is not a straw man
    easy = generate_phantoms(8, 64, seed=5, bias=0.0, noise=0.05)
    assert np.mean([dice(classical_segment(im, "CT"), t) for im, t in easy]) > 0.8


def test_predict_returns_masks_at_each_native_size(trained):
    pred = trained.predictor()
    ims = [np.zeros((50, 70), np.uint8), np.zeros((80, 80, 3), np.uint8)]
    masks = pred.predict(ims)
    assert [m.shape for m in masks] == [(50, 70), (80, 80)] and masks[0].dtype == bool


def test_training_is_deterministic():
    data = generate_phantoms(6, 32, seed=3)
    cfg = ExpertConfig(image_size=32, epochs=2, batch_size=4, channels=(4, 8, 16))
    a = train_expert(data, modality="CT", config=cfg, seed=7)
    b = train_expert(data, modality="CT", config=cfg, seed=7)
    for (ka, va), (kb, vb) in zip(
        a.network.state_dict().items(), b.network.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    assert a.history == b.history


def test_safetensors_round_trip_and_hash_refusal(trained, tmp_path):
    card_path = save_expert(trained, tmp_path / "ct")
    card = json.loads(card_path.read_text())
    assert card["modality"] == "ct" and card["training_sources"] == {"phantoms": 40}
    assert card["metrics"]["dice"] == trained.metrics["dice"] and len(card["weights_sha256"]) == 64
    loaded = load_expert(tmp_path / "ct", expected_sha256=card["weights_sha256"])
    assert loaded.name == "unet_ct"
    ims = [im for im, _ in generate_phantoms(3, 64, seed=9)]
    for a, b in zip(loaded.predict_proba(ims), trained.predictor().predict_proba(ims), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ExpertIntegrityError):
        load_expert(tmp_path / "ct", expected_sha256="0" * 64)
    weights = tmp_path / "ct" / card["weights_file"]
    blob = bytearray(weights.read_bytes())
    blob[-5] ^= 0xFF  # tamper with a weight byte
    weights.write_bytes(bytes(blob))
    with pytest.raises(ExpertIntegrityError):
        load_expert(card_path)
    with pytest.raises(ExpertIntegrityError):
        load_expert(weights)  # the card beside it still applies


def test_user_weights_safetensors_and_torchscript(tmp_path):
    from safetensors.torch import save_file

    cfg = ExpertConfig(image_size=32, channels=(4, 8, 16))
    net = build_network(cfg)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "mine.safetensors"))
    user = load_expert(tmp_path / "mine.safetensors", config=cfg)
    assert user.name == "user_mine" and user.predict([np.zeros((40, 40), np.uint8)])[0].shape == (40, 40)
    with pytest.raises(ExpertLoadError):
        load_expert(tmp_path / "mine.safetensors")  # default architecture does not fit

    class TwoClass(torch.nn.Module):
        def forward(self, x):
            fg = (x > 0).float()
            return torch.cat([1 - fg, fg], dim=1) * 10

    torch.jit.script(TwoClass()).save(str(tmp_path / "ts_model.pt"))
    spec = SourceSpec(
        name="u",
        layout="image_folder",
        root=".",
        modality="X-ray",
        organ="chest",
        license="x",
        expert_model="ts_model.pt",
        registry_file=str(tmp_path / "u.yaml"),
    )
    ts = load_expert_for(spec, tmp_path / "experts")
    img = np.zeros((64, 64), np.uint8)
    img[10:30, 10:30] = 255
    mask = ts.predict([img])[0]
    assert mask[20, 20] and not mask[50, 50]
    with pytest.raises(ExpertIntegrityError):
        load_expert(tmp_path / "ts_model.pt", expected_sha256="f" * 64)
    # A registry that pins the weights' hash refuses a changed file.
    pinned = spec.model_copy(update={"expert_model_sha256": "0" * 64})
    with pytest.raises(ExpertIntegrityError):
        load_expert_for(pinned, tmp_path / "experts")
    with pytest.raises(ExpertLoadError):
        load_expert(tmp_path / "missing.safetensors")


def test_an_expert_is_used_only_on_what_it_was_trained_on(trained, tmp_path):
    """The card scopes an expert to its modality, organ and label: a CT liver-lesion expert
    grounds an unannotated CT liver source (its regions named 'liver lesion') and nothing else."""
    from dataclasses import replace

    from medtrinity_assets.segmentation import ExpertTarget, load_experts_for

    target = ExpertTarget("ct", "liver", "liver lesion")
    save_expert(replace(trained, target=target, name=target.name), tmp_path / "experts" / target.slug)
    spec = SourceSpec(name="c", layout="dicom", root=".", modality="CT", organ="Liver", license="x")
    (expert,) = load_experts_for(spec, tmp_path / "experts")
    assert expert.name == "unet_ct__liver__liver_lesion" and expert.label == "liver lesion"
    card = expert.card
    assert (card["modalities"], card["organs"], card["labels"], card["synthetic"]) == (["ct"], ["liver"], ["liver lesion"], False)
    for other in ({"modality": "MRI"}, {"organ": "head"}, {"synthetic": True}):
        assert load_experts_for(spec.model_copy(update=other), tmp_path / "experts") == [], other


def test_collect_training_samples(tmp_path):
    rows = []
    for i, (im, m) in enumerate(generate_phantoms(4, 32, seed=2)):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(im).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(m).save(tmp_path / "masks" / f"{i}.png")
        rows.append(
            {
                "record_id": f"r{i}",
                "image_path": f"images/{i}.png",
                "mask_path": f"masks/{i}.png" if i < 3 else None,
                "mask_labels": [1] if i < 3 else [],
                "mask_label_names": [None] if i < 3 else [],
            }
        )
    (tmp_path / "preprocessed_images").mkdir()
    pl.DataFrame(rows).write_parquet(tmp_path / "preprocessed_images" / "ph.parquet")
    spec = SourceSpec(name="ph", layout="image_folder", root=".", modality="CT", organ="X", license="x", labels={1: "Cyst"})
    got = collect_training_samples([spec], tmp_path, max_samples=2, seed=0)
    from medtrinity_assets.segmentation import ExpertTarget

    assert list(got) == [ExpertTarget("ct", "x", "cyst")]  # unnamed values train nothing
    samples, prov = got[ExpertTarget("ct", "x", "cyst")]
    assert len(samples) == 2 and prov == {"ph": 2}
    assert samples[0][0].shape == (32, 32) and set(np.unique(samples[0][1])) <= {0, 1}


def test_predictions_on_images_unlike_the_training_ones_are_not_used():
    """The card keeps what the training images were like; a prediction on a much smaller image,
    or of a region brighter than the tissue when the target was always darker, is refused."""
    from medtrinity_assets.segmentation.domain import out_of_domain, training_domain

    rng = np.random.default_rng(0)
    samples = []
    for _ in range(10):  # a dark target (grey matter on T1) in brighter tissue on black
        img = np.zeros((100, 100), np.float32)
        img[20:80, 20:80] = 0.8 + 0.02 * rng.standard_normal((60, 60))
        mask = np.zeros((100, 100), np.uint8)
        mask[30:45, 30:70] = 1
        img[mask > 0] = 0.5
        samples.append((img, mask))
    card = training_domain(samples)
    assert card["target_polarity"] == -1 and card["image_side_range"] == [100, 100]
    img, mask = samples[0]
    assert out_of_domain(card, img, mask > 0) is None
    bright = img.copy()
    bright[mask > 0] = 1.0  # the predicted region is brighter than the rest: not the target
    assert "brighter than the rest of the tissue" in out_of_domain(card, bright, mask > 0)
    small = img[::4, ::4]
    assert "25 px on its longer side" in out_of_domain(card, small, mask[::4, ::4] > 0)
