"""Answers from a model: greedy decoding on left-padded prompt batches, cut at the end token."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from medtrinity_assets.llava.conversation import encode_prompts
from medtrinity_assets.llava.data import Sample


def answer(model: Any, processor: Any, samples: Sequence[Sample], *, system: str, device: str,
           max_new_tokens: int = 12, batch_size: int = 16,
           progress: Callable[[int, int], None] | None = None) -> list[str]:
    """The model's answer to each sample's question, in order."""
    import torch

    model.to(device)
    model.eval()
    tok = processor.tokenizer
    out: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in encode_prompts(processor, chunk, system, left_pad=True).items()}
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = ids[:, batch["input_ids"].shape[1]:]
        out.extend(t.strip() for t in tok.batch_decode(new, skip_special_tokens=True))
        if progress:
            progress(len(out), len(samples))
    return out
