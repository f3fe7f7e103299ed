"""LLaVA-Tri on the tiny configuration: image tokens and labels as LLaVA expects, training that
learns, resumption after an interruption, checkpoints that round-trip (and refuse tampering),
a user's LLaVA-style folder, and the Dagster assets through a two-rank torchrun job (Pipes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import torch

from medtrinity_assets.llava.config import preset
from medtrinity_assets.llava.conversation import IGNORE, encode_training
from medtrinity_assets.llava.data import Sample, llava_samples
from medtrinity_assets.llava.evaluate import answer
from medtrinity_assets.llava.model import CheckpointError, build_model, load_checkpoint, save_checkpoint
from medtrinity_assets.llava.trainer import train_stage
from medtrinity_assets_tests.llava_fixtures import make_export

PLAN = preset("test")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llava_out")
    make_export(out)
    return out


@pytest.fixture(scope="module")
def cache(export) -> Path:
    return export / "models" / "language"  # where the assets keep it: converted once for the module


def _samples(export: Path) -> list[Sample]:
    return llava_samples(export / "export" / "llava" / "train.json", export / "export")


def test_image_tokens_expanded_and_loss_only_on_the_answer(export, cache):
    model, processor = build_model(PLAN.model, cache)
    samples = _samples(export)[:2]
    batch = encode_training(processor, samples, PLAN.model.system, PLAN.model.max_length)
    n_patches = (PLAN.model.vision.image_size // PLAN.model.vision.patch_size) ** 2
    image_id = model.config.image_token_id
    assert ((batch["input_ids"] == image_id).sum(dim=1) == n_patches).all()
    tok = processor.tokenizer
    for i, s in enumerate(samples):
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        want = tok(s.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert labelled == want[: len(labelled)] and labelled[-1] == tok.eos_token_id
        first = int((batch["labels"][i] != IGNORE).nonzero()[0])
        assert (batch["input_ids"][i][:first] == image_id).sum() == n_patches  # the image is in the prompt
    assert model(**batch).loss.isfinite()


def test_training_learns_and_resumes_after_an_interruption(export, cache, tmp_path):
    samples = _samples(export)[:4]
    stage = dataclasses.replace(PLAN.pretrain[1], epochs=24, max_steps=None, batch_size=4, save_every=2, lr=1e-2)
    kw = dict(seed=0, device="cpu", system=PLAN.model.system, max_length=PLAN.model.max_length)

    model, processor = build_model(PLAN.model, cache)
    whole = train_stage(model, processor, samples, stage, tmp_path / "whole", **kw)
    assert whole.losses[-1] < 0.5 * whole.losses[0]  # it learns the four answers
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    class Killed(Exception):
        pass

    def kill_at_step_6(message: str) -> None:  # logged before step 6 is saved: the last save is step 4
        if "step 6/" in message:
            raise Killed

    model, processor = build_model(PLAN.model, cache)
    with pytest.raises(Killed):
        train_stage(model, processor, samples, stage, tmp_path / "resumed", log=kill_at_step_6, **kw)
    model, processor = build_model(PLAN.model, cache)  # a fresh process would start like this
    resumed = train_stage(model, processor, samples, stage, tmp_path / "resumed", **kw)
    assert resumed.resumed_from == 4 and len(resumed.losses) == len(whole.losses)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, reference[k], atol=1e-5), k
    again = train_stage(model, processor, samples, stage, tmp_path / "resumed", **kw)
    assert again.resumed_from == len(whole.losses)  # finished: restored, not retrained


def test_saved_steps_count_only_for_the_same_starting_weights(export, cache, tmp_path):
    """The same stage on the same samples, begun from other weights (LLaVA-Tri retrained on a new
    export), trains anew: a step saved from the old weights is never restored into the new run."""
    samples = _samples(export)[:4]
    stage = dataclasses.replace(PLAN.finetune, max_steps=2, save_every=1)
    kw = dict(seed=0, device="cpu", system=PLAN.model.system, max_length=PLAN.model.max_length)
    model, processor = build_model(PLAN.model, cache)
    first = train_stage(model, processor, samples, stage, tmp_path / "state", start="pretrained:aaa", **kw)
    model, processor = build_model(PLAN.model, cache)
    other = train_stage(model, processor, samples, stage, tmp_path / "state", start="pretrained:bbb", **kw)
    assert other.resumed_from == 0 and other.fingerprint != first.fingerprint
    again = train_stage(model, processor, samples, stage, tmp_path / "state", start="pretrained:bbb", **kw)
    assert again.resumed_from == len(other.losses)  # the same start: restored, not retrained


def test_finished_checkpoints_are_kept_without_their_training_state(tmp_path):
    """A checkpoint trained exactly as asked is kept on the next run (nothing retrained) and its
    resumable state (optimizer moments, about three times the weights) is not left on disk; a
    pretrained-variant fine-tune follows a retrained LLaVA-Tri checkpoint."""
    from medtrinity_assets.llava import recipe

    out = tmp_path / "out"
    export_root = make_export(out)
    said: list[str] = []
    card = recipe.pretrain(PLAN, out, export_root, "cpu", said.append)
    assert not (recipe.models_root(out) / recipe.PRETRAINED / "state").exists()
    assert recipe.pretrain(PLAN, out, export_root, "cpu", said.append)["weights_sha256"] == card["weights_sha256"]
    assert "kept" in said[-1]

    samples = [s for s in _samples(out)][:6]
    vqa = pl.DataFrame({"question_id": [s.id for s in samples], "split": ["train"] * len(samples),
                        "image_file": [str(s.image) for s in samples], "question": [s.question for s in samples],
                        "answer": [s.answer for s in samples]})
    tuned = recipe.finetune(PLAN, out, vqa, "t", "pretrained", 0, "cpu", said.append)
    folder = recipe.finetuned_dir(out, "t", "pretrained", 0)
    assert tuned["lineage"]["pretrained_sha256"] == card["weights_sha256"]
    assert not folder.with_name(folder.name + ".state").exists()
    kept = recipe.finetune(PLAN, out, vqa, "t", "pretrained", 0, "cpu", said.append)
    assert kept["weights_sha256"] == tuned["weights_sha256"] and kept["kept"] and "kept" in said[-1]

    retrained = recipe.pretrain(dataclasses.replace(PLAN, seeds=(1,)), out, export_root, "cpu", said.append)
    assert retrained["weights_sha256"] != card["weights_sha256"]
    anew = recipe.finetune(PLAN, out, vqa, "t", "pretrained", 0, "cpu", said.append)
    assert anew["lineage"]["pretrained_sha256"] == retrained["weights_sha256"]
    assert anew["stage"]["resumed_from"] == 0 and anew["weights_sha256"] != tuned["weights_sha256"]


def test_the_starting_weights_name_the_embedded_language_models_hash(tmp_path):
    """A new embedded language model (another GGUF installed, converted again) is another start: no
    checkpoint trained from the old one is kept. Its converted folder's name stays the same, so
    the start is named by the hash its conversion recorded."""
    import json

    from medtrinity_assets.llava import recipe
    from medtrinity_assets.llava.language import EMBEDDED_NAME

    plan = dataclasses.replace(PLAN, model=dataclasses.replace(
        PLAN.model, language=dataclasses.replace(PLAN.model.language, source="embedded")))
    converted = recipe.language_cache(tmp_path) / EMBEDDED_NAME
    converted.mkdir(parents=True)
    starts = []
    for sha in ("a" * 64, "b" * 64):
        (converted / "weights.json").write_text(json.dumps({"sha256": sha}), encoding="utf-8")
        starts.append(recipe.initial_weights(plan, tmp_path, 0))
    assert starts[0] != starts[1]
    assert recipe.initial_weights(plan, tmp_path, 0) == starts[1] != recipe.initial_weights(plan, tmp_path, 1)


def test_checkpoint_round_trip_refuses_tampering_and_loads_as_a_llava_folder(export, cache, tmp_path):
    from medtrinity_assets.llava.config import ModelSpec
    from medtrinity_assets.llava.model import load_llava_folder

    model, processor = build_model(PLAN.model, cache, seed=3)
    samples = _samples(export)[:3]
    before = answer(model, processor, samples, system="", device="cpu", max_new_tokens=4)
    folder = tmp_path / "ckpt"
    card = save_checkpoint(model, processor, folder, {"kind": "test"})
    assert (folder / "model.safetensors").is_file() and card["weights_sha256"]
    loaded, proc2, card2 = load_checkpoint(folder)
    assert card2["kind"] == "test"
    assert answer(loaded, proc2, samples, system="", device="cpu", max_new_tokens=4) == before
    user, user_proc = build_model(ModelSpec(llava_path=str(folder)), cache)  # "my own LLaVA weights"
    assert answer(user, user_proc, samples, system="", device="cpu", max_new_tokens=4) == before
    plain = tmp_path / "hf_folder"  # a LLaVA folder written by transformers, without our card
    model.save_pretrained(plain)
    processor.save_pretrained(plain)
    hf_model, hf_proc = load_llava_folder(plain)
    assert answer(hf_model, hf_proc, samples, system="", device="cpu", max_new_tokens=4) == before
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed since it was written"):
        load_checkpoint(folder)


def _resources(out: Path, **training) -> dict:
    from medtrinity_assets.defs.model_resources import LlavaTrainingResource, VQASetsResource
    from medtrinity_assets.defs.resources import OutputStorage

    return {"storage": OutputStorage(out_dir=str(out)),
            "training": LlavaTrainingResource(preset="test", device="cpu", **training),
            "vqa_sets": VQASetsResource()}


def test_model_chain_assets_through_torchrun_and_pipes(export, dagster_instance):
    from medtrinity_assets.defs.model import (
        llava_tri_checkpoint,
        vqa_dataset,
        vqa_evaluation,
        vqa_finetuned_checkpoint,
    )

    dagster_instance.add_dynamic_partitions("vqa_sets", ["demo"])
    result = dg.materialize([llava_tri_checkpoint], instance=dagster_instance,
                            resources=_resources(export, launcher="torchrun", nproc_per_node=2))
    assert result.success
    meta = result.asset_materializations_for_node("llava_tri_checkpoint")[0].metadata
    assert meta["train_samples"].value == 16 and meta["steps"].value == 4  # two ranks share 2 x 4 micro-batches
    logs = [e.message for e in dagster_instance.all_logs(result.run_id) if e.message]
    assert any("multigranular: step 2/2" in m for m in logs)  # streamed from rank 0 through Pipes
    card = load_checkpoint(Path(meta["path"].value))[2]
    assert card["lineage"]["export_version"] == meta["export_version"].value
    assert any((export / "models" / "jobs" / "logs").iterdir())  # the launcher's rank folders: beside the job, not in /tmp

    chain = [vqa_dataset, vqa_finetuned_checkpoint, vqa_evaluation]
    result = dg.materialize(chain, instance=dagster_instance, partition_key="demo", resources=_resources(export),
                            selection=[a.key for a in chain])
    assert result.success
    evaluation = pl.read_parquet(export / "vqa_evaluation" / "demo.parquet")
    tests = pl.read_parquet(export / "vqa_dataset" / "demo.parquet").filter(pl.col("split") == "test").height
    assert tests and evaluation.height == tests * (2 * len(PLAN.seeds) + 1)  # two models, every seed; the majority once
    meta = result.asset_materializations_for_node("vqa_evaluation")[0].metadata
    assert {"pretrained/closed_accuracy", "base/closed_accuracy", "with_vs_without"} <= set(meta)


def test_a_leaking_benchmark_split_is_refused_by_the_check_and_by_fine_tuning(export, dagster_instance, tmp_path):
    """A VQA-RAD folder whose test question is about a training image: the blocking check fails
    with the question named, and fine-tuning refuses to start."""
    import json
    import shutil

    from medtrinity_assets.defs.model import vqa_dataset, vqa_finetuned_checkpoint
    from medtrinity_assets.defs.model_resources import VQASetsResource

    root = tmp_path / "rad"
    (root / "VQA_RAD Image Folder").mkdir(parents=True)
    image = next((export / "export" / "images").rglob("*.png"))
    shutil.copy(image, root / "VQA_RAD Image Folder" / "synpic1.png")
    records = [{"qid": 1, "image_name": "synpic1.png", "question": "Is there a lesion?", "answer": "yes",
                "answer_type": "CLOSED", "question_type": "PRES", "phrase_type": "freeform", "image_organ": "HEAD"},
               {"qid": 2, "image_name": "synpic1.png", "question": "Is the lesion left?", "answer": "no",
                "answer_type": "CLOSED", "question_type": "POS", "phrase_type": "test_freeform", "image_organ": "HEAD"}]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(records), encoding="utf-8")
    dagster_instance.add_dynamic_partitions("vqa_sets", ["rad"])
    resources = {**_resources(export), "vqa_sets": VQASetsResource(sets={"rad": {"layout": "vqa-rad", "root": str(root)}})}
    result = dg.materialize([vqa_dataset], instance=dagster_instance, partition_key="rad", resources=resources,
                            raise_on_error=False)
    check = result.get_asset_check_evaluations()[0]
    assert not check.passed and "vqa-rad:2" in json.dumps(check.metadata["leaks"].value)
    result = dg.materialize([vqa_finetuned_checkpoint], instance=dagster_instance, partition_key="rad",
                            resources=resources, raise_on_error=False)
    failure = result.failure_data_for_node("vqa_finetuned_checkpoint")
    assert not result.success and "vqa-rad:2" in failure.user_failure_data.description


def test_a_frozen_embedded_language_model_is_referenced_not_copied(export, cache, tmp_path):
    """SmolLM2 (one decoder layer kept): a checkpoint whose embeddings never trained stores only
    what changed, names the converted base by hash, and answers the same after loading."""
    from medtrinity_assets.llava.config import LanguageSpec, ModelSpec, VisionSpec
    from medtrinity_assets.llava.model import language_base_folder
    from medtrinity_assets.llava.trainer import part_keys

    spec = ModelSpec(vision=VisionSpec(image_size=32, patch_size=16, hidden_size=32, layers=1, heads=2,
                                       intermediate_size=64), language=LanguageSpec("embedded", layers=1))
    model, processor = build_model(spec, cache)
    samples = _samples(export)[:2]
    before = answer(model, processor, samples, system="", device="cpu", max_new_tokens=3)
    base = language_base_folder(spec, cache)
    card = save_checkpoint(model, processor, tmp_path / "ckpt", {}, language_base=base,
                           unchanged=part_keys(model, ["embeddings"]))
    assert card["language_base"]["sha256"] and (tmp_path / "ckpt" / "model.safetensors").stat().st_size < 40e6
    loaded, proc, _ = load_checkpoint(tmp_path / "ckpt")
    assert answer(loaded, proc, samples, system="", device="cpu", max_new_tokens=3) == before


def test_siglip_tower_and_a_local_vision_folder(export, cache, tmp_path):
    """A SigLIP configuration (no CLS token: every patch is an image token) and a CLIP tower
    from a local folder (its weights end up in the model)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from medtrinity_assets.llava.config import ModelSpec, VisionSpec

    samples = _samples(export)[:1]
    siglip = ModelSpec(vision=VisionSpec(kind="siglip", image_size=32, patch_size=8, hidden_size=32, layers=1,
                                         heads=2, intermediate_size=64), language=PLAN.model.language, max_length=96)
    model, processor = build_model(siglip, cache)
    batch = encode_training(processor, samples, "", 96)
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 16 and model(**batch).loss.isfinite()

    tower = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64))
    tower.save_pretrained(tmp_path / "clip")
    spec = ModelSpec(vision=VisionSpec(kind="clip", path=str(tmp_path / "clip")), language=PLAN.model.language,
                     max_length=96)
    model, processor = build_model(spec, cache)
    mine = model.model.vision_tower.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in tower.state_dict().items())


def test_the_embedded_conversion_is_shared_by_output_roots_and_rebuilt_when_changed(tmp_path, monkeypatch):
    """Output roots link one machine-wide conversion (no 540 MB copy per root); a changed one is redone."""
    import shutil

    from medtrinity_assets.llava import language

    calls: list[Path] = []
    real = language._convert_embedded
    monkeypatch.setattr(language, "_convert_embedded", lambda folder: (calls.append(folder), real(folder)))
    monkeypatch.setenv("MEDTRINITY_CACHE", str(tmp_path / "cache"))
    first, second = (language.embedded_folder(tmp_path / root) for root in ("a", "b"))
    assert len(calls) == 1, "converted once for both output roots"
    shared = calls[0]
    weights = [folder / "model.safetensors" for folder in (first, second, shared)]
    assert len({w.stat().st_ino for w in weights}) == 1, "hard links, not copies"

    (shared / "model.safetensors").unlink()
    (shared / "model.safetensors").write_bytes(b"changed after it was written")
    assert language._weights_intact(first), "roots linked before keep their bytes"
    # the second conversion is the same code as the first: re-create it from root a to save 20 s
    monkeypatch.setattr(language, "_convert_embedded",
                        lambda folder: (calls.append(folder), shutil.copytree(first, folder)))
    third = language.embedded_folder(tmp_path / "c")
    assert calls[1:] == [shared], "the changed shared conversion was discarded and made again"
    assert language._weights_intact(third)
