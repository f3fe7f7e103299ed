"""A local vision-language model (transformers) as captioner: weights from a local folder only.

``AutoProcessor`` + ``AutoModelForImageTextToText`` with ``local_files_only=True`` and
``trust_remote_code=False``; batched generation at temperature 0.1 and up to 1024 new tokens
by default. Replies are parsed like the API backend's, with one batched repair round.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from pathlib import Path
from typing import Any

from medtrinity_assets.captioning.backends.base import Captioner, CaptionerConfigError, CaptionResult
from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.prompt import (
    REPAIR_PROMPT,
    SYSTEM_PROMPT,
    FacetParseError,
    build_user_text,
    parse_reply,
    render_overlay,
)

logger = logging.getLogger(__name__)


def check_model_path(model_path: str | Path | None) -> Path:
    """The model folder, or a clear error (nothing is ever downloaded)."""
    if not model_path:
        raise CaptionerConfigError(
            "transformers_local captioner needs model_path: a local folder with a vision-language model "
            "(config.json, processor files and weights); nothing is downloaded"
        )
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise CaptionerConfigError(
            f"transformers_local model_path {str(path)!r} is not a local folder; download the model "
            "yourself (e.g. `hf download <repo> --local-dir <folder>`) and point model_path at it"
        )
    if not (path / "config.json").is_file():
        raise CaptionerConfigError(f"transformers_local model_path {str(path)!r} has no config.json")
    return path


def weights_fingerprint(path: Path) -> str:
    """sha256 over config.json and the names and sizes of the weight files: new weights at the
    same path give new cache keys."""
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".pt", ".gguf") or f.name.endswith(".index.json"):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


class TransformersLocalCaptioner(Captioner):
    name = "transformers_local"

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TransformersLocalCaptioner:
        return cls(
            settings.get("model_path"),
            device=settings.get("device", "cpu"),
            batch_size=int(settings.get("batch_size", 4)),
            temperature=float(settings.get("temperature", 0.1)),
            max_new_tokens=int(settings.get("max_tokens", 1024)),
        )

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "cpu",
        batch_size: int = 4,
        temperature: float = 0.1,
        max_new_tokens: int = 1024,
        dtype: str = "auto",
        log: logging.Logger | None = None,
    ) -> None:
        self.path = check_model_path(model_path)
        self.model = self.path.name
        self.device = device
        self.batch_size = max(1, batch_size)
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.dtype = dtype
        self.log = log or logger
        self._processor: Any = None
        self._model: Any = None
        self.fingerprint = weights_fingerprint(self.path)

    @property
    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens, "dtype": self.dtype,
                "weights": self.fingerprint}

    def load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not any(self.path.glob("*.safetensors")):
            pickled = sorted(f.name for f in self.path.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            raise CaptionerConfigError(
                f"no safetensors weights in {str(self.path)!r} (local files only)"
                + (f"; {', '.join(pickled)} would have to be unpickled, which is refused: convert the "
                   "checkpoint to safetensors" if pickled else "")
            )
        kw = {"local_files_only": True, "trust_remote_code": False}
        try:
            self._processor = AutoProcessor.from_pretrained(str(self.path), **kw)
            # safetensors only: a pickled checkpoint (.bin / .pt) is refused, never unpickled
            self._model = AutoModelForImageTextToText.from_pretrained(
                str(self.path), dtype=self.dtype, use_safetensors=True, **kw
            )
        except (OSError, ValueError, KeyError) as exc:
            raise CaptionerConfigError(
                f"could not load a vision-language model from {str(self.path)!r} (local files only): {exc}"
            ) from exc
        self._model.to(self.device)
        self._model.eval()
        tok = getattr(self._processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"  # decoder-only batched generation

    def close(self) -> None:
        self._model = None
        self._processor = None

    def _conversation(self, item: CaptionInput, extra: list[dict] | None = None) -> tuple[list[dict], Any]:
        image = render_overlay(item)
        content: list[dict[str, Any]] = []
        if image is not None:
            content.append({"type": "image", "image": image})
        content.append({"type": "text", "text": build_user_text(item)})
        conv = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
                {"role": "user", "content": content}]
        return conv + (extra or []), image

    def _generate(self, conversations: list[list[dict]]) -> list[str]:
        import torch

        template_kw: dict[str, Any] = {"padding": True}
        if "processor_kwargs" in inspect.signature(self._processor.apply_chat_template).parameters:
            template_kw = {"processor_kwargs": template_kw}  # newer transformers want them there
        inputs = self._processor.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt", **template_kw,
        )
        inputs = inputs.to(self.device)
        gen_kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.temperature > 0:
            gen_kw.update(do_sample=True, temperature=self.temperature)
        else:
            gen_kw.update(do_sample=False)
        with torch.inference_mode():
            out = self._model.generate(**inputs, **gen_kw)
        new = out[:, inputs["input_ids"].shape[1]:]
        return list(self._processor.batch_decode(new, skip_special_tokens=True))

    def caption(self, items: list[CaptionInput]) -> list[CaptionResult]:
        self.load()
        results: list[CaptionResult] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            try:
                convs = [self._conversation(it)[0] for it in batch]
                replies = self._generate(convs)
            except Exception as exc:
                self.log.warning("generation failed for a batch of %d: %s", len(batch), exc)
                results.extend(CaptionResult.failed(f"generation failed: {type(exc).__name__}: {exc}") for _ in batch)
                continue
            pending: list[int] = []
            out: list[CaptionResult | None] = []
            for i, reply in enumerate(replies):
                try:
                    text, facets = parse_reply(reply)
                    out.append(CaptionResult(text=text, facets=facets, raw=reply))
                except FacetParseError:
                    out.append(None)
                    pending.append(i)
            if pending:  # one batched repair round
                try:
                    convs = [
                        self._conversation(batch[i], [
                            {"role": "assistant", "content": [{"type": "text", "text": replies[i]}]},
                            {"role": "user", "content": [{"type": "text", "text": REPAIR_PROMPT}]},
                        ])[0]
                        for i in pending
                    ]
                    fixed = self._generate(convs)
                except Exception as exc:
                    fixed = [""] * len(pending)
                    self.log.warning("repair generation failed: %s", exc)
                for i, fix in zip(pending, fixed, strict=True):
                    raw = replies[i] + "\n--- repair reply ---\n" + fix
                    try:
                        _, facets = parse_reply(fix)
                        out[i] = CaptionResult(text=" ".join(facets.values()), facets=facets, raw=raw)
                    except FacetParseError:
                        out[i] = CaptionResult.failed("reply had no facet JSON, also after one repair", raw=raw)
            results.extend(r for r in out if r is not None)
        return results
