"""Prompts and batches: the question wrapped in the language model's chat template with the
image token where the LLaVA processor expands it into the image's patch tokens, the answer
after it, and labels that count only the answer's tokens (and its end token) in the loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medtrinity_assets.llava.data import Sample, load_image
from medtrinity_assets.llava.language import IMAGE_TOKEN

IGNORE = -100


def prompt_text(tokenizer: Any, question: str, system: str) -> str:
    """The text before the answer: the chat template's user turn and the assistant's opening
    (with an empty ``system``, a ChatML tokenizer gets no system turn at all: fewer tokens)."""
    user = f"{IMAGE_TOKEN}\n{question}"
    if not system and "<|im_start|>" in tokenizer.get_vocab():  # ChatML without a system turn: shortest
        return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\nUSER: {user}\nASSISTANT: "


def _end_ids(tokenizer: Any) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def encode_prompts(processor: Any, samples: Sequence[Sample], system: str, *, left_pad: bool = False) -> dict:
    """Images and prompts through the LLaVA processor (it expands the image token)."""
    tok = processor.tokenizer
    side = tok.padding_side
    tok.padding_side = "left" if left_pad else "right"
    try:
        return processor(images=[load_image(s.image) for s in samples],
                         text=[prompt_text(tok, s.question, system) for s in samples],
                         padding=True, return_tensors="pt")
    finally:
        tok.padding_side = side


def encode_training(processor: Any, samples: Sequence[Sample], system: str, max_length: int) -> dict:
    """A training batch: prompt tokens (labels ignored), answer tokens cut to fit ``max_length``,
    the end token; right-padded."""
    import torch

    tok = processor.tokenizer
    prompts = encode_prompts(processor, samples, system)
    rows, labels = [], []
    for i, sample in enumerate(samples):
        prompt = prompts["input_ids"][i][prompts["attention_mask"][i].bool()].tolist()
        budget = max_length - len(prompt) - len(_end_ids(tok))
        if budget < 1:
            raise ValueError(f"max_length {max_length} leaves no room for an answer after a {len(prompt)}-token "
                             "prompt (image tokens included)")
        answer = tok(sample.answer, add_special_tokens=False)["input_ids"][:budget] + _end_ids(tok)
        rows.append(prompt + answer)
        labels.append([IGNORE] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [IGNORE] * (width - len(lab)) for lab in labels]),
        "pixel_values": prompts["pixel_values"],
    }
