"""GPU training benchmark (issue 14): a ~100M-parameter LLaVA (a Llama language model of 6
layers at width 768 with a 49k vocabulary, a CLIP ViT-S/16-sized tower at 224 px, the MLP
projector; 102M parameters) trained for a
fixed number of steps in bf16 on synthetic batches, side by side with a fair baseline in the
same run: the same language model alone on the same number of text tokens (what the vision
tower and the image tokens cost).

Prints samples/s, tokens/s (image tokens included) and model FLOPs utilisation,
``MFU = 6 * trainable-and-frozen params * tokens/s / peak``, peak from ``--peak-tflops``
(default 989, an H100/H200's dense bf16). Weights start random: no download, no data.

    python benchmarks/train_gpu.py                       # on a GPU
    python benchmarks/train_gpu.py --device cpu --size tiny --steps 2   # a smoke run anywhere
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

SIZES = {
    "100m": {"hidden": 768, "layers": 6, "heads": 12, "inter": 2048, "v_hidden": 384, "v_layers": 12,
             "v_heads": 6, "v_inter": 1536, "image": 224, "patch": 16},
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "inter": 128, "v_hidden": 32, "v_layers": 1,
             "v_heads": 2, "v_inter": 64, "image": 32, "patch": 16},
}
VOCAB = 49_153
IMAGE_TOKEN = VOCAB - 1


def build(size: dict[str, int]) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=VOCAB, hidden_size=size["hidden"], intermediate_size=size["inter"],
                       num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                       num_key_value_heads=size["heads"], max_position_embeddings=4096, tie_word_embeddings=True)
    vision = CLIPVisionConfig(image_size=size["image"], patch_size=size["patch"], hidden_size=size["v_hidden"],
                              num_hidden_layers=size["v_layers"], num_attention_heads=size["v_heads"],
                              intermediate_size=size["v_inter"])
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                         projector_hidden_act="gelu", vision_feature_select_strategy="default",
                         vision_feature_layer=-1, image_seq_length=(size["image"] // size["patch"]) ** 2,
                         tie_word_embeddings=True)
    return LlavaForConditionalGeneration(config)


def batch(size: dict[str, int], n: int, text_len: int, device: str) -> dict[str, Any]:
    n_img = (size["image"] // size["patch"]) ** 2
    g = torch.Generator().manual_seed(0)
    text = torch.randint(0, VOCAB - 2, (n, text_len), generator=g)
    ids = torch.cat([torch.full((n, n_img), IMAGE_TOKEN), text], dim=1)
    labels = ids.clone()
    labels[:, : n_img + text_len // 2] = -100  # loss on the second half (the answer)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device),
            "pixel_values": torch.randn(n, 3, size["image"], size["image"], generator=g).to(device)}


def timed(step: Any, steps: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    from medtrinity_assets.llava.trainer import AnswerLoss

    size = SIZES[args.size]
    device = args.device
    bf16 = device.startswith("cuda") and not args.fp32
    model = build(size).to(device)
    params = sum(p.numel() for p in model.parameters())
    loss_fn = AnswerLoss(model).module
    data = batch(size, args.batch, args.text_len, device)
    text_only = {"input_ids": data["input_ids"][:, -args.text_len:], "labels": data["labels"][:, -args.text_len:]}
    language = model.model.language_model
    lm_params = sum(p.numel() for p in language.parameters())

    def make_step(forward: Any, parameters: list) -> Any:
        opt = torch.optim.AdamW(parameters, lr=1e-4, fused=device.startswith("cuda"))

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = forward()
            loss.backward()
            opt.step()
        return step

    def llava_forward() -> Any:
        return loss_fn(**data)

    def lm_forward() -> Any:
        hidden = language(input_ids=text_only["input_ids"]).last_hidden_state[:, :-1]
        keep = text_only["labels"][:, 1:] != -100
        logits = model.lm_head(hidden[keep])
        return torch.nn.functional.cross_entropy(logits.float(), text_only["labels"][:, 1:][keep])

    seq = data["input_ids"].shape[1]
    out: dict[str, Any] = {"size": args.size, "params_m": round(params / 1e6, 1), "device": device,
                           "dtype": "bf16" if bf16 else "fp32", "batch": args.batch, "seq": seq, "steps": args.steps}
    for name, forward, n_params, tokens in (
        ("llava", llava_forward, params, seq),
        ("baseline: language model alone", lm_forward, lm_params, args.text_len),
    ):
        wall = timed(make_step(forward, list(model.parameters())), args.steps, args.warmup, device)
        tok_s = args.batch * tokens * args.steps / wall
        out[name] = {"seconds": round(wall, 3), "samples_s": round(args.batch * args.steps / wall, 2),
                     "tokens_s": round(tok_s, 1), "mfu": round(6 * n_params * tok_s / (args.peak_tflops * 1e12), 4)}
    out["llava_over_baseline_tokens_s"] = round(out["llava"]["tokens_s"] / out["baseline: language model alone"]["tokens_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="100m")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--text-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on the GPU")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
