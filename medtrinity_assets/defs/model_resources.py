"""Resources of the model chain: what LLaVA-Tri is made of and how it trains (a preset with
overrides, the device, in process or as an external ``torchrun`` job), and the VQA sets a user
registers (a benchmark's folder in its public layout)."""


from typing import Any, Literal

import dagster as dg
from pydantic import Field

from medtrinity_assets.defs.accelerators import default_device, resolve_device

DEMO_VQA_SET = "demo"


class LlavaTrainingResource(dg.ConfigurableResource):
    """The LLaVA-Tri recipe: ``preset`` (demo: the embedded SmolLM2 on CPU; recipe: the paper's
    stages for your own weights on GPUs; test: tiny) with your weights and seeds over it."""

    preset: Literal["demo", "recipe", "test"] = "demo"
    vision_path: str | None = Field(None, description="local CLIP/SigLIP vision tower folder (safetensors)")
    vision_kind: str | None = Field(None, description="clip or siglip (None: the preset's)")
    language_source: str | None = Field(None, description="'embedded', 'tiny' or a local language-model folder")
    language_layers: int | None = Field(None, description="keep the first N decoder layers (None: the preset's)")
    llava_path: str | None = Field(None, description="a local LLaVA-style folder to start from")
    seeds: list[int] | None = Field(None, description="fine-tuning seeds of the with/without comparison")
    compare_without_pretraining: bool | None = None
    finetune_max_steps: int | None = None
    device: Literal["cpu", "cuda", "auto"] = default_device()
    launcher: Literal["in_process", "torchrun"] = Field(
        "in_process", description="torchrun: the training step runs as an external torchrun job (Dagster Pipes)")
    nproc_per_node: int = Field(1, ge=1, description="torchrun processes (one per GPU)")

    def plan(self) -> Any:
        """The :class:`~medtrinity_assets.llava.config.TrainingPlan` these settings describe."""
        from dataclasses import replace

        from medtrinity_assets.llava.config import preset

        plan = preset(self.preset)
        model = plan.model
        vision = replace(model.vision, **{k: v for k, v in (("path", self.vision_path), ("kind", self.vision_kind))
                                          if v is not None})
        language = replace(model.language, **{k: v for k, v in (("source", self.language_source),
                                                                  ("layers", self.language_layers)) if v is not None})
        model = replace(model, vision=vision, language=language, llava_path=self.llava_path or model.llava_path)
        finetune = replace(plan.finetune, max_steps=self.finetune_max_steps or plan.finetune.max_steps)
        top: dict[str, Any] = {"model": model, "finetune": finetune}
        if self.seeds is not None:
            top["seeds"] = tuple(self.seeds)
        if self.compare_without_pretraining is not None:
            top["compare_without_pretraining"] = self.compare_without_pretraining
        return replace(plan, **top)

    def resolved_device(self) -> str:
        return resolve_device(self.device)


class VQASetsResource(dg.ConfigurableResource):
    """VQA sets besides ``demo`` (generated from the export's triplets): name -> ``{layout, root}``
    with layout ``vqa-rad``, ``slake`` or ``pathvqa`` and the folder holding its public files."""

    sets: dict[str, dict[str, str]] = Field(default_factory=dict)
    per_image: int = Field(8, ge=1, description="demo set: questions per image at most")
    seed: int = 0

    def names(self) -> list[str]:
        return [DEMO_VQA_SET, *sorted(k for k in self.sets if k != DEMO_VQA_SET)]

    def spec(self, name: str) -> dict[str, str]:
        try:
            spec = self.sets[name]
        except KeyError:
            raise ValueError(f"no VQA set '{name}'; registered: {', '.join(self.names())}") from None
        missing = [k for k in ("layout", "root") if not spec.get(k)]
        if missing:
            raise ValueError(f"VQA set '{name}': {', '.join(missing)} missing (give layout and root)")
        return spec
