"""The LLaVA model and processor from configuration (transformers' LLaVA classes), and
checkpoints in safetensors with their card.

A checkpoint folder holds ``config.json`` (the LLaVA configuration), the processor's files
(tokenizer, image processor, ``processor_config.json``), ``model.safetensors`` and ``card.json``
(lineage, steps, losses, seeds, wall time, the weights' sha256). When the language model stayed
frozen, its weights are not copied into every checkpoint: the card names the converted base
folder and its hash, and loading takes them from there (checked). Everything is loaded from
safetensors; nothing is unpickled and no remote code runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from medtrinity_assets.core.storage import sha256_file
from medtrinity_assets.llava.config import ModelSpec, VisionSpec
from medtrinity_assets.llava.language import (
    IMAGE_TOKEN,
    LanguageModelError,
    embedded_folder,
    load_language,
    quiet_transformers,
    recorded_sha256,
)

WEIGHTS = "model.safetensors"
CARD = "card.json"


class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete or its weights changed since they were written."""


def _vision_config(spec: VisionSpec) -> Any:
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    cls = CLIPVisionConfig if spec.kind == "clip" else SiglipVisionConfig
    if spec.path:
        return cls.from_pretrained(spec.path)
    return cls(image_size=spec.image_size, patch_size=spec.patch_size, hidden_size=spec.hidden_size,
               num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
               intermediate_size=spec.intermediate_size)


def _image_processor(spec: VisionSpec, size: int) -> Any:
    """The Pillow-backed image processors (the default ones want torchvision, which must not be
    installed here: it replaces the CPU torch)."""
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    if spec.path and (Path(spec.path) / "preprocessor_config.json").is_file():
        cls = CLIPImageProcessorPil if spec.kind == "clip" else SiglipImageProcessorPil
        return cls.from_pretrained(spec.path)
    # images arrive stretched to a square, so resizing loses nothing to a crop
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _load_vision_weights(model: Any, spec: VisionSpec) -> None:
    from transformers import CLIPVisionModel, SiglipVisionModel

    if not spec.path:
        return
    cls = CLIPVisionModel if spec.kind == "clip" else SiglipVisionModel
    tower = cls.from_pretrained(spec.path, use_safetensors=True, trust_remote_code=False)
    missing, _ = model.model.vision_tower.load_state_dict(tower.state_dict(), strict=False)
    if missing:
        raise CheckpointError(f"vision tower {spec.path}: {len(missing)} weight(s) missing, e.g. {missing[:3]}")


def build_model(spec: ModelSpec, cache_root: Path, seed: int = 0) -> tuple[Any, Any]:
    """``(LlavaForConditionalGeneration, LlavaProcessor)``: a new model whose vision tower and
    projector start from ``seed`` (or the user's weights) and whose language model is loaded."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    if spec.llava_path:
        return load_llava_folder(Path(spec.llava_path))
    language, tokenizer = load_language(spec.language, cache_root)
    vision = _vision_config(spec.vision)
    clip = spec.vision.kind == "clip"
    config = LlavaConfig(vision_config=vision, text_config=language.config,
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), projector_hidden_act="gelu",
                         vision_feature_select_strategy="default" if clip else "full", vision_feature_layer=-1,
                         image_seq_length=(vision.image_size // vision.patch_size) ** 2,
                         tie_word_embeddings=language.config.tie_word_embeddings)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(language.model.state_dict())
    model.lm_head.load_state_dict(language.lm_head.state_dict())
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.tie_weights()
    _load_vision_weights(model, spec.vision)
    processor = LlavaProcessor(image_processor=_image_processor(spec.vision, vision.image_size), tokenizer=tokenizer,
                               patch_size=vision.patch_size,
                               vision_feature_select_strategy=config.vision_feature_select_strategy,
                               num_additional_image_tokens=1 if clip else 0)
    return model, processor


def load_llava_folder(path: Path) -> tuple[Any, Any]:
    """A LLaVA-style folder (``config.json`` of model type llava, safetensors weights, processor
    files), as users keep their own weights."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a LLaVA folder (no config.json)")
    if (path / CARD).is_file():
        model, processor, _ = load_checkpoint(path)
        return model, processor
    model = LlavaForConditionalGeneration.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
    return model, LlavaProcessor.from_pretrained(path, trust_remote_code=False)


def _language_keys(model: Any) -> set[str]:
    return {f"model.language_model.{k}" for k in model.model.language_model.state_dict()} | {"lm_head.weight"}


def _tensors(model: Any, skip: set[str]) -> dict[str, Any]:
    """The state dict without ``skip`` and without tied copies (safetensors refuses shared memory)."""
    out, seen = {}, set()
    for name, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        if name in skip or ptr in seen:
            continue
        seen.add(ptr)
        out[name] = tensor.detach().contiguous().cpu()
    return out


def save_checkpoint(model: Any, processor: Any, folder: Path, card: dict[str, Any], *,
                    language_base: Path | None = None, unchanged: set[str] | None = None) -> dict[str, Any]:
    """Write the checkpoint atomically (a temporary folder renamed into place); returns the card.

    ``language_base``: the converted language-model folder holding the weights named in
    ``unchanged`` (default: every language weight) as the model still has them; they are
    referenced by hash instead of copied."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    skip = (_language_keys(model) if unchanged is None else unchanged & _language_keys(model)) if language_base else set()
    save_file(_tensors(model, skip), str(tmp / WEIGHTS), metadata={"format": "pt"})
    model.config.to_json_file(str(tmp / "config.json"))
    processor.save_pretrained(tmp)
    card = {**card, "weights_sha256": sha256_file(tmp / WEIGHTS), "language_base": None}
    if language_base:
        card["language_base"] = {"folder": str(language_base), "sha256": recorded_sha256(language_base)}
    (tmp / CARD).write_text(json.dumps(card, indent=2, default=str), encoding="utf-8")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return card


def read_card(folder: Path) -> dict[str, Any]:
    path = folder / CARD
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CARD} (not a checkpoint this pipeline wrote)")
    return json.loads(path.read_text(encoding="utf-8"))


def verified_card(folder: Path) -> dict[str, Any]:
    """The card of a checkpoint this pipeline wrote, once its weights match the hash it names."""
    card = read_card(folder)
    weights = folder / WEIGHTS
    if sha256_file(weights) != card.get("weights_sha256"):
        raise CheckpointError(f"{weights} changed since it was written (hash mismatch with {CARD})")
    return card


def _load_language_base(model: Any, base: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    folder = Path(base["folder"])
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"the language model this checkpoint builds on is gone: {weights}")
    if sha256_file(weights) != base["sha256"]:
        raise CheckpointError(f"{weights} changed since the checkpoint was written (hash mismatch)")
    state = load_file(str(weights))
    inner = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    target = model.model.language_model.state_dict()
    missing = [k for k in target if k not in inner]
    if missing:
        raise CheckpointError(f"{weights}: {len(missing)} language weight(s) missing, e.g. {missing[:3]}")
    vocab = target["embed_tokens.weight"].shape[0]
    inner["embed_tokens.weight"] = _fit_rows(inner["embed_tokens.weight"], target["embed_tokens.weight"], vocab)
    model.model.language_model.load_state_dict({k: inner[k] for k in target})
    if "lm_head.weight" in state and not model.config.tie_word_embeddings:
        model.lm_head.weight.data.copy_(_fit_rows(state["lm_head.weight"], model.lm_head.weight.data, vocab))


def _fit_rows(loaded: Any, current: Any, rows: int) -> Any:
    """Base embeddings extended with the rows added for new tokens (the image token)."""
    if loaded.shape[0] >= rows:
        return loaded[:rows]
    out = current.clone()
    out[: loaded.shape[0]] = loaded
    return out


def load_checkpoint(folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, processor, card)`` from a checkpoint this pipeline wrote, hashes checked."""
    from safetensors.torch import load_file
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    quiet_transformers()
    card = verified_card(folder)
    model = LlavaForConditionalGeneration(LlavaConfig.from_json_file(str(folder / "config.json")))
    if card.get("language_base"):
        _load_language_base(model, card["language_base"])
    state = load_file(str(folder / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    covered = _language_keys(model) if card.get("language_base") else {"lm_head.weight"}
    if unexpected or set(missing) - covered:
        raise CheckpointError(f"{folder}: weights do not match the configuration "
                              f"(missing {sorted(set(missing) - covered)[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    processor = LlavaProcessor.from_pretrained(folder, trust_remote_code=False)
    return model, processor, card


def language_base_folder(spec: ModelSpec, cache_root: Path) -> Path | None:
    """The converted folder whose weights a frozen language model keeps (embedded model only)."""
    if spec.llava_path or spec.language.source != "embedded":
        return None
    try:
        return embedded_folder(cache_root)
    except LanguageModelError:
        return None
