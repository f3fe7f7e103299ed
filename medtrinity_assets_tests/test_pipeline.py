"""The whole asset graph on real demo partitions, materialized into one shared test instance."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from medtrinity_assets.definitions import build_definitions
from medtrinity_assets.defs.plan import RunPlan
from medtrinity_assets.defs.resources import (
    OpenAICompatibleCaptionerResource,
    OutputStorage,
    SourceRegistry,
    TransformersLocalCaptionerResource,
    default_resources,
)
from medtrinity_assets.defs.runner import run_plan

# Real DICOM (JPEG 2000 X-ray with a diagnosis in its description; multi-frame head MR), a
# colour micrograph through the classical fallback, a table source with a box, synthetic masks.
SOURCES = ["xray_tibia", "mr_head_multiframe", "histology_ihc", "microscopy_cells", "synthetic_phantoms"]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
FAST_EXPERTS = {"ops": {"expert_models": {"config": {"epochs": 12, "image_size": 64, "min_samples": 8, "max_samples": 60}}}}


def pipeline_registry():
    from medtrinity_assets.core.paths import DEFAULT_REGISTRY_DIR

    return DEFAULT_REGISTRY_DIR


def make_resources(out, **overrides) -> dict:
    from medtrinity_assets.defs.model_resources import LlavaTrainingResource

    resources = default_resources()
    resources["training"] = LlavaTrainingResource(preset="test", device="cpu")  # the tiny configuration
    resources["storage"] = OutputStorage(out_dir=str(out))
    resources["registry"] = SourceRegistry(registry_dir=str(pipeline_registry()))
    resources.update(overrides)
    return resources


def small_knowledge(folder: Path, n: int = 60):
    """A knowledge base of the default corpus's first ``n`` chunks (tests of operations, where
    retrieval quality is not the point, index it in a second instead of embedding every chunk)."""
    import json

    from medtrinity_assets.defs.resources import KnowledgeConfig
    from medtrinity_assets.knowledge.corpus import ingest_corpora

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "small.jsonl"
    if not path.exists():
        chunks = ingest_corpora([], include_default=True).chunks.head(n)
        rows = [{"id": str(r["chunk_id"]), "title": r["title"], "text": r["text"]} for r in chunks.iter_rows(named=True)]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return KnowledgeConfig(include_default=False, corpus_paths=[str(folder)])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, dagster_instance, demo_registry):
    """The run plan (the CLI's): ingest per shard, shared models, enrichment per shard, summary per source."""
    out = tmp_path_factory.mktemp("pipeline_out")
    dagster_instance.add_dynamic_partitions("sources", SOURCES)
    dagster_instance.add_dynamic_partitions("vqa_sets", ["demo"])
    defs = build_definitions(make_resources(out))
    plan = RunPlan.from_assets(defs.assets)
    reports = run_plan(defs, plan, SOURCES, dagster_instance, run_config=FAST_EXPERTS, vqa_sets=["demo"])
    results: dict = {"early": {}, "late": {}, "summary": {}}
    for r in reports:
        if r.phase in ("shared_models", "export", "vqa"):
            results["global" if r.phase == "shared_models" else r.phase] = r.result
        else:
            results[{"ingest": "early", "enrichment": "late"}.get(r.phase, r.phase)][r.source] = r.result
    return out, results


def _table(out, asset: str, name: str) -> pl.DataFrame:
    return pl.read_parquet(out / asset / f"{name}.parquet")


def test_every_run_succeeded(pipeline):
    _, results = pipeline
    assert results["global"].success
    for phase in ("early", "late", "summary"):
        for name, result in results[phase].items():
            assert result.success, (phase, name)


def test_ingest_metadata_has_counts_preview_and_contact_sheet(pipeline):
    _, results = pipeline
    mats = results["early"]["xray_tibia"].asset_materializations_for_node("ingest_source_assets")
    by_key = {m.asset_key.to_user_string(): m.metadata for m in mats}
    assert by_key["source_manifest"]["dagster/row_count"].value == 1
    assert "data:image/png;base64," in by_key["preprocessed_images"]["contact_sheet"].value
    assert "|" in by_key["source_manifest"]["preview"].value


def test_every_image_has_rois_and_every_roi_a_checked_caption(pipeline):
    out, _ = pipeline
    for name in SOURCES:
        images = _table(out, "preprocessed_images", name)
        rois = _table(out, "roi_set", name)
        captions = _table(out, "caption_batch", name)
        quality = _table(out, "caption_quality", name)
        assert images.height > 0, name
        assert set(images["record_id"]) <= set(rois["record_id"]), name
        ok = rois.filter(pl.col("status") == "ok")
        assert set(zip(ok["record_id"], ok["roi_id"], strict=True)) <= set(
            zip(captions["record_id"], captions["roi_id"], strict=True)
        ), name
        assert (captions["status"] == "ok").all(), name
        assert quality["consistent"].all() and not quality["phi_found"].any(), name


def test_roi_origins_cover_mask_box_expert_and_classical(pipeline):
    out, _ = pipeline
    origins = set()
    for name in SOURCES:
        origins |= set(_table(out, "roi_set", name)["origin"])
    assert {"mask", "box", "classical"} <= origins
    assert any(o.startswith("expert:") for o in origins), origins
    # The held-out phantoms have no mask: the expert trained on the annotated phantoms grounds
    # them, under its trained label; no expert runs outside its scope (the head MR is not a phantom).
    phantoms = _table(out, "roi_set", "synthetic_phantoms")
    expert = phantoms.filter(pl.col("origin").str.starts_with("expert:"))
    assert expert.height > 0 and set(expert["label"]) == {"lesion"}
    assert not _table(out, "roi_set", "mr_head_multiframe")["origin"].str.starts_with("expert:").any()


def test_blocking_quality_checks_pass(pipeline):
    _, results = pipeline
    for name in SOURCES:
        evals = {e.check_name: e for e in results["late"][name].get_asset_check_evaluations()}
        assert evals["claims_consistent"].passed and evals["no_phi"].passed, name


def test_caption_rerun_is_cached(pipeline, dagster_instance):
    out, _ = pipeline
    before = _table(out, "caption_batch", "xray_tibia")
    defs = build_definitions()
    resources = make_resources(out)
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets("caption_batch"),
        partition_key="000|xray_tibia",
        instance=dagster_instance,
        resources=resources,
        run_config=QUIET,
    )
    (mat,) = result.asset_materializations_for_node("caption_batch")
    batch = mat.metadata["batch"].value
    assert batch["computed"] == 0 and batch["cached"] == before.height
    after = _table(out, "caption_batch", "xray_tibia")
    assert after.sort("roi_id").equals(before.sort("roi_id"))


def test_retrieved_knowledge_grounds_the_tibia_lesion(pipeline):
    out, _ = pipeline
    hits = _table(out, "retrieved_knowledge", "xray_tibia")
    docstore = pl.read_parquet(out / "knowledge_index" / "docstore.parquet")
    texts = docstore.filter(pl.col("chunk_id").is_in(hits["chunk_ids"].explode().to_list()))["text"].to_list()
    assert any("fibroma" in t.lower() for t in texts)


def _caption_with(copy, captioner, dagster_instance):
    defs = build_definitions()
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets("caption_batch", "caption_quality")
        | dg.AssetSelection.checks_for_assets("caption_quality"),
        partition_key="000|synthetic_phantoms",
        instance=dagster_instance,
        resources=make_resources(copy, captioner=captioner),
        run_config=QUIET,
        raise_on_error=False,
    )


def test_openai_backend_is_configuration_only_and_blocking_checks_catch_bad_claims(
    pipeline, dagster_instance, tmp_path, monkeypatch
):
    """Same graph, captioner switched by configuration to an OpenAI-compatible server (a real
    socket). The server's canned replies describe a head CT in the left third: for the synthetic
    MRI phantoms those claims are wrong. Unguarded, the blocking consistency check fails; guarded
    (the default), every such description is replaced by the embedded one and counted."""
    import shutil

    from medtrinity_assets_tests.chat_server import ChatServer

    out, _ = pipeline
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    monkeypatch.setenv("TEST_VLM_KEY", "sk-test-secret")
    with ChatServer(latency_s=0.01) as server:
        settings = {"base_urls": [server.base_url], "model": "test-vlm", "api_key_env": "TEST_VLM_KEY"}
        raw = OpenAICompatibleCaptionerResource(**settings, fallback_to_embedded=False)
        result = _caption_with(copy, raw, dagster_instance)
        assert server.stats.requests > 0
        captions = _table(copy, "caption_batch", "synthetic_phantoms")
        assert set(captions["backend"]) == {"openai_compatible"} and set(captions["model"]) == {"test-vlm"}
        assert (captions["status"] == "ok").all()
        assert not captions["text"].str.contains("sk-test-secret").any()
        evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert not evals["claims_consistent"].passed
        assert (~_table(copy, "caption_quality", "synthetic_phantoms")["consistent"]).sum() > 0

        guarded = _caption_with(copy, OpenAICompatibleCaptionerResource(**settings), dagster_instance)
    captions = _table(copy, "caption_batch", "synthetic_phantoms")
    assert captions["fallback_reason"].is_not_null().all() and set(captions["backend"]) == {"embedded"}
    assert captions["raw"].str.contains("computed tomography").all()  # the rejected text is kept for review
    evals = {e.check_name: e for e in guarded.get_asset_check_evaluations()}
    assert evals["claims_consistent"].passed
    [mat] = [m for m in guarded.get_asset_materialization_events() if m.asset_key.path == ["caption_batch"]]
    assert mat.materialization.metadata["batch"].value["fallbacks"] == captions.height


def test_local_vlm_backend_is_configuration_only(pipeline, dagster_instance, tmp_path):
    """Same graph, captioner switched by configuration to a local transformers model (a tiny,
    randomly initialised LLaVA saved as safetensors): every ROI gets a row from that backend,
    and word salad never passes the blocking checks."""
    import json
    import shutil

    from medtrinity_assets_tests.tiny_vlm import write_tiny_llava

    out, _ = pipeline
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    model_dir = write_tiny_llava(tmp_path / "tiny-llava")
    captioner = TransformersLocalCaptionerResource(model_path=str(model_dir), max_tokens=16, batch_size=2)
    resources = make_resources(copy, captioner=captioner)
    defs = build_definitions()
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets("caption_batch", "caption_quality")
        | dg.AssetSelection.checks_for_assets("caption_quality"),
        partition_key="000|xray_tibia",
        instance=dagster_instance,
        resources=resources,
        run_config=QUIET,
        raise_on_error=False,
    )
    captions = _table(copy, "caption_batch", "xray_tibia")
    assert captions.height == _table(copy, "roi_set", "xray_tibia").height
    assert set(captions["backend"]) == {"transformers_local"} and set(captions["model"]) == {"tiny-llava"}
    params = json.loads(captions["params"][0])
    assert params["max_new_tokens"] == 16 and params["temperature"] == 0.1
    assert captions["raw"].is_not_null().all()  # what the model wrote is kept
    evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
    # random weights write no facet JSON: the rows are failed with their error, and the blocking
    # consistency check stops the batch
    assert (captions["status"] == "failed").all() and captions["error"].str.contains("facet JSON").all()
    assert not evals["claims_consistent"].passed and not evals["facets_complete"].passed


def test_user_corpus_rebuild_embeds_only_new_chunks(pipeline, dagster_instance, tmp_path):
    """A user points the knowledge base at their own JSONL folder: only its chunks are embedded."""
    import json
    import shutil

    from medtrinity_assets.defs.resources import KnowledgeConfig

    out, results = pipeline
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    corpus = tmp_path / "my_corpus"
    corpus.mkdir()
    docs = [
        {
            "id": "u1",
            "title": "Osteoid osteoma",
            "text": "Osteoid osteoma is a small benign bone tumour "
            "with a lucent nidus surrounded by dense reactive sclerosis, typically causing night pain.",
        },
        {
            "id": "u2",
            "title": "Pneumatosis intestinalis",
            "text": "Gas within the bowel wall appears as "
            "linear or bubbly lucencies along the intestine on radiographs and computed tomography.",
        },
    ]
    (corpus / "mine.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n{not json\n")
    resources = make_resources(copy, knowledge=KnowledgeConfig(corpus_paths=[str(corpus)]))
    defs = build_definitions()
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets("knowledge_corpus", "knowledge_index"),
        instance=dagster_instance,
        resources=resources,
        run_config=QUIET,
    )
    meta = {
        node: result.asset_materializations_for_node(node)[0].metadata
        for node in ("knowledge_corpus", "knowledge_index")
    }
    assert meta["knowledge_index"]["embedded"].value == 2
    assert meta["knowledge_index"]["reused"].value >= 300
    assert meta["knowledge_corpus"]["quarantined_by_reason"].value  # the malformed line
    docstore = pl.read_parquet(copy / "knowledge_index" / "docstore.parquet")
    assert {"u1", "u2"} <= set(docstore["doc_id"])


def test_single_run_over_two_partitions_reports_each_partition(pipeline, dagster_instance, tmp_path):
    """A single-run backfill of the GPU-bound assets over two sources: each partition's
    materialization carries its own row count, preview and pictures, not the last source's."""
    import shutil

    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    out, _ = pipeline
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    defs = build_definitions(make_resources(copy))
    job = defs.resolve_job_def("enrichment_job")
    pair = ["histology_ihc", "microscopy_cells"]  # neighbours in the instance's partition order
    result = job.execute_in_process(
        instance=dagster_instance,
        asset_selection=[dg.AssetKey("roi_set"), dg.AssetKey("caption_batch")],
        tags={ASSET_PARTITION_RANGE_START_TAG: f"000|{pair[0]}", ASSET_PARTITION_RANGE_END_TAG: f"000|{pair[1]}"},
        run_config=QUIET,
    )
    assert result.success
    for asset in ("roi_set", "caption_batch"):
        mats = {m.partition.split("|")[1]: m.metadata for m in result.asset_materializations_for_node(asset)}
        assert set(mats) == set(pair), asset
        for name in pair:
            assert mats[name]["dagster/row_count"].value == _table(copy, asset, name).height, (asset, name)
        assert mats[pair[0]]["dagster/row_count"].value != mats[pair[1]]["dagster/row_count"].value
        pictures = "overlays" if asset == "roi_set" else "sample_triplets"
        assert mats[pair[0]][pictures].value != mats[pair[1]][pictures].value
        assert mats[pair[0]]["preview"].value != mats[pair[1]]["preview"].value


def test_the_plan_ends_with_a_verified_export_every_reader_loads(pipeline, monkeypatch):
    """The run plan's last phase writes the dataset; it loads in `datasets` (offline), in a
    WebDataset reader and as LLaVA JSON, and its verification found nothing wrong."""
    import json

    import datasets
    import webdataset as wds

    out, results = pipeline
    assert results["export"].success
    root = out / "export"
    table = pl.read_parquet(root / "triplets.parquet")
    assert table.height > 0 and set(table["source"]) <= set(SOURCES)
    assert json.loads((root / "verification.json").read_text())["problems"] == []
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    hf = datasets.load_dataset(str(root / "hf"))
    assert sum(len(hf[s]) for s in hf) == table.height
    shards = sorted(str(p) for p in (root / "webdataset").glob("*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert len(samples) == table.height and all({"png", "json", "txt"} <= set(s) for s in samples)
    llava = [r for f in (root / "llava").glob("*.json") for r in json.loads(f.read_text())]
    assert len(llava) == table.height and all(r["conversations"][0]["value"].startswith("<image>\n") for r in llava)
    assert (root / "viewer" / "index.html").exists() and (root / "DATASET_CARD.md").exists()


def test_the_plan_ends_with_checkpoints_and_an_evaluation_of_both_variants(pipeline):
    """The export phase pretrains LLaVA-Tri on the export; the vqa phase generates the demo VQA
    set from the export's splits, fine-tunes with and without pretraining and evaluates both."""
    import json

    out, results = pipeline
    assert results["export"].success and results["vqa"].success
    card = json.loads((out / "models" / "llava_tri" / "checkpoint" / "card.json").read_text())
    assert [s["stage"] for s in card["stages"]] == ["alignment", "multigranular"]
    vqa = pl.read_parquet(out / "vqa_dataset" / "demo.parquet")
    export = pl.read_parquet(out / "export" / "triplets.parquet", columns=["image_sha256", "split"])
    split_of = dict(export.unique("image_sha256").iter_rows())
    assert all(split_of[h] == s for h, s in vqa.select("image_sha256", "split").iter_rows())  # the export's splits
    evaluation = pl.read_parquet(out / "vqa_evaluation" / "demo.parquet")
    assert set(evaluation["variant"]) == {"pretrained", "base", "majority"}
    models = evaluation.filter(pl.col("variant") != "majority")
    assert set(models["seed"]) == {0, 1} and models.height == 4 * vqa.filter(pl.col("split") == "test").height
    assert evaluation.filter(variant="majority").height == vqa.filter(pl.col("split") == "test").height
    meta = results["vqa"].asset_materializations_for_node("vqa_evaluation")[0].metadata
    assert meta["summary"].value["pretrained"]["n_seeds"] == 2 and "majority/closed_accuracy" in meta


def test_an_evaluation_set_overlapping_training_makes_the_export_refuse(pipeline, dagster_instance, tmp_path):
    """A registered evaluation set holding a training image (its source file, as a benchmark
    would ship it) fails the export, naming the record."""
    import shutil

    from medtrinity_assets.defs.resources import ExportSettings

    out, _ = pipeline
    table = pl.read_parquet(out / "export" / "triplets.parquet")
    train = table.filter(pl.col("split") == "train").row(0, named=True)
    manifest = _table(out, "source_manifest", train["source"])
    relpath = manifest.filter(pl.col("record_id") == train["record_id"])["relpath"][0]
    from medtrinity_assets.ingest.registry import load_registry

    spec = {s.name: s for s in load_registry(pipeline_registry())[0]}[train["source"]]
    raw = Path(spec.resolved_root()) / relpath
    evals = tmp_path / "benchmark_test_images"
    evals.mkdir()
    shutil.copy(raw, evals / f"q1{raw.suffix}")
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    defs = build_definitions()
    result = dg.materialize(
        defs.assets,
        selection=dg.AssetSelection.assets("medtrinity_dataset"),
        instance=dagster_instance,
        resources=make_resources(copy, export=ExportSettings(eval_sets=[str(evals)])),
        run_config=QUIET,
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message if failure.step_failure_data.error else ""
    assert "refusing to export" in message and f"{train['source']}/{train['record_id']}" in message


def test_every_asset_reports_numeric_trends_and_picture_files(pipeline):
    """Duration, rows in/out and set-aside counts are numbers on every materialization (the UI plots
    them across runs); the pictures people look at most are PNG files linked from the metadata."""
    out, results = pipeline
    runs = [*results["early"].values(), *results["late"].values(), *results["summary"].values(), results["global"],
            results["export"], results["vqa"]]
    seen = set()
    for result in runs:
        for mat in result.get_asset_materialization_events():
            meta = mat.materialization.metadata
            key = mat.materialization.asset_key.to_user_string()
            seen.add(key)
            assert isinstance(meta["duration_s"], dg.FloatMetadataValue) and meta["duration_s"].value >= 0, key
            for name in ("rows_in", "rows_out", "quarantined"):
                assert isinstance(meta[name], dg.IntMetadataValue), (key, name)
            assert meta["rows_out"].value <= meta["rows_in"].value or key in {"retrieved_knowledge", "roi_set", "coarse_captions", "llava_tri_checkpoint", "vqa_finetuned_checkpoint", "knowledge_index"}, key
    assert {"source_manifest", "roi_set", "caption_batch", "caption_quality", "triplets", "medtrinity_dataset"} <= seen
    mats = {m.materialization.asset_key.to_user_string(): m.materialization.metadata
            for m in results["late"]["synthetic_phantoms"].get_asset_materialization_events()}
    for key, picture in (("roi_set", "overlays_file"), ("caption_batch", "sample_triplets_file")):
        path = Path(mats[key][picture].value)
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.is_relative_to(out), path


def test_sample_triplets_leave_out_descriptions_the_phi_scan_flags(pipeline):
    """The sample cards are drawn before the descriptions are checked and are shown on the asset page:
    a description holding a person's name is not among them; the others are."""
    from medtrinity_assets.captioning.inputs import read_caption_inputs
    from medtrinity_assets.core.tables import CAPTION_BATCH
    from medtrinity_assets.defs.captions import _sample_triplets

    out, _ = pipeline
    part = "synthetic_phantoms"
    inputs = read_caption_inputs(out, part)[:12]
    captions = CAPTION_BATCH.read(out, part).filter(pl.col("record_id").is_in([i.record_id for i in inputs]))
    clean = _sample_triplets(inputs, captions)
    assert len(clean) == 4
    flagged = clean[0][1]
    leaked = captions.with_columns(
        pl.when(pl.col("roi_id").cast(pl.String) == flagged).then(pl.col("text") + " Seen by Doe^Jane.")
        .otherwise(pl.col("text")).alias("text"))
    shown = _sample_triplets(inputs, leaked)
    assert flagged not in [roi for _, roi, _ in shown] and len(shown) == 4
    assert all("Doe^Jane" not in text for _, _, text in shown)


def test_sample_triplets_are_spread_over_the_shard_one_roi_per_image_first(pipeline):
    """Cards from the start of a shard all show its first slices: the images tried are spread over
    the shard, the first four at its quantiles, and a second ROI of an image only after one of each."""
    from medtrinity_assets.captioning.inputs import read_caption_inputs
    from medtrinity_assets.core.tables import CAPTION_BATCH
    from medtrinity_assets.defs.captions import _sample_triplets, sample_records

    ids = [f"r{k:03d}" for k in range(100) for _ in range(3)]  # 3 ROIs per image, as a volume's slices
    picks = sample_records(ids)
    assert picks[:4] == ["r000", "r025", "r050", "r075"] and len(picks) == len(set(picks)) == 32
    assert sample_records(["a", "a", "b"]) == ["a", "b"] and sample_records([]) == []

    out, _ = pipeline
    part = "synthetic_phantoms"
    records = list(dict.fromkeys(i.record_id for i in read_caption_inputs(out, part)))
    picks = sample_records(records)
    rank = {rid: k for k, rid in enumerate(picks)}
    inputs = sorted(read_caption_inputs(out, part, picks), key=lambda i: rank[i.record_id])
    captions = CAPTION_BATCH.read(out, part).filter(pl.col("record_id").is_in(picks))
    shown = _sample_triplets(inputs, captions)
    by_roi = {str(i.roi_id): i.record_id for i in inputs}
    images = [by_roi[roi] for _, roi, _ in shown]
    assert len(shown) == 4 and len(set(images)) == 4  # four images before a second ROI of one
    assert images == sorted(images, key=rank.__getitem__)
    positions = sorted(records.index(r) for r in images)
    assert positions[-1] - positions[0] >= len(records) // 2, positions  # not the shard's first images


def test_pictures_are_shown_on_the_asset_page_from_the_reports_url(tmp_path, monkeypatch):
    """With the reports folder served (``MEDTRINITY_REPORTS_URL``), a picture is also Markdown short
    enough for Dagster to show inline, naming the URL at which that folder serves the PNG file."""
    import urllib.parse

    import numpy as np

    from medtrinity_assets.defs.reporting import INLINE_MARKDOWN_CHARS, REPORTS_URL_ENV, picture_file

    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    monkeypatch.delenv(REPORTS_URL_ENV, raising=False)
    assert set(picture_file(tmp_path, "roi_set", "000|ct_head", "overlays", image)) == {"overlays_file"}
    monkeypatch.setenv(REPORTS_URL_ENV, "https://reports.example.org/medtrinity/")
    meta = picture_file(tmp_path, "roi_set", "000|ct_head", "overlays", image)
    md = meta["overlays_inline"].value
    assert isinstance(meta["overlays_inline"], dg.MarkdownMetadataValue) and len(md) < INLINE_MARKDOWN_CHARS
    url = md[md.index("(") + 1 : -1]
    assert url.startswith("https://reports.example.org/medtrinity/roi_set/000%7Cct_head/overlays-"), url
    served = tmp_path / "reports" / urllib.parse.unquote(url.removeprefix("https://reports.example.org/medtrinity/"))
    assert served == Path(meta["overlays_file"].value) and served.read_bytes()[:4] == b"\x89PNG"


def _sharded_root(tmp_path: Path, demo_dir: Path) -> Path:
    """The phantom source (40 images with masks) plus an exact and a near copy of two of its images,
    named to sort last: with 7 images a shard, they fall in the last of 6 shards."""
    import shutil

    import numpy as np
    from PIL import Image

    root = tmp_path / "phantoms"
    shutil.copytree(demo_dir / "synthetic_phantoms", root)
    images = sorted((root / "images").glob("*.png"))
    shutil.copy(images[0], root / "images" / "zz_exact_copy.png")
    pixels = np.asarray(Image.open(images[1], formats=["PNG"])).astype(np.int16)
    noise = np.random.default_rng(0).integers(-2, 3, pixels.shape) * (np.random.default_rng(1).random(pixels.shape) < 0.1)
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(root / "images" / "zz_near_copy.png")
    return root


def test_a_source_in_several_shards_gives_the_same_triplets_as_one(pipeline, dagster_instance, demo_dir, tmp_path):
    """Shards are independent partitions; duplicates across them are still removed (by the source's
    summary), so 6 shards give exactly the triplets of 1."""
    out, _ = pipeline
    root = _sharded_root(tmp_path, demo_dir)
    registry = tmp_path / "registry"
    registry.mkdir()
    declaration = (pipeline_registry() / "synthetic_phantoms.yaml").read_text()
    declaration = "\n".join(f"root: {root}" if line.startswith("root:") else line.replace("synthetic_phantoms", "shard_check")
                            for line in declaration.splitlines())
    dagster_instance.add_dynamic_partitions("sources", ["shard_check"])

    def build(shard_size: int) -> dict:
        (registry / "shard_check.yaml").write_text(f"{declaration}\nshard_size: {shard_size}\n")
        defs = build_definitions(make_resources(out, registry=SourceRegistry(registry_dir=str(registry))))
        full = RunPlan.from_assets(defs.assets, until="triplets")
        plan = RunPlan([p for p in full.phases if p.name != "shared_models"], full._graph)
        reports = run_plan(defs, plan, ["shard_check"], dagster_instance, run_config=QUIET)
        assert reports and all(r.success for r in reports), [(r.phase, r.reason) for r in reports]
        (summary,) = [r for r in reports if r.phase == "summary"]
        (mat,) = summary.result.asset_materializations_for_node("triplets")
        return {"table": _table(out, "triplets", "shard_check").sort("triplet_id"), "runs": reports,
                "shards": mat.metadata["shards"].value, "across": mat.metadata["cross_shard_duplicates"].value}

    one = build(10_000)
    manifest = _table(out, "source_manifest", "shard_check")
    assert manifest.filter(pl.col("status") == "duplicate").height == 2  # both copies, within the one shard
    assert one["shards"] == 1 and one["across"] == 0

    many = build(7)
    assert many["shards"] == 6 and many["across"] == 2  # the copies, found across shards
    ingests = [r for r in many["runs"] if r.phase == "ingest"]
    assert len(ingests) == 6 and len({r.run_id for r in ingests}) == 6, "one run per shard (retryable alone)"
    stats_files = {m.partition: "files_fingerprint" in m.metadata for r in ingests
                   for m in r.result.asset_materializations_for_node("ingest_source_assets")
                   if m.asset_key.path[-1] == "source_manifest"}
    assert stats_files == {f"{k:03d}|shard_check": k == 0 for k in range(6)}, "only shard 0 fingerprints the files"
    assert (out / "preprocessed_images" / "shard_check@005.parquet").is_file()
    assert one["table"].height > 30
    assert many["table"].equals(one["table"])


def test_a_summary_joined_in_slices_of_images_equals_the_triplets(pipeline, tmp_path, monkeypatch):
    """The summary reads a shard a slice of images at a time (a triplet joins one image's rows):
    slices of 3 images give the triplet table the whole shard gave, one row group per slice."""
    import pyarrow.parquet as pq

    from medtrinity_assets.export import source_triplets as summary

    out, _ = pipeline
    name = "synthetic_phantoms"
    for table in summary.INPUTS:  # a copy: the fixture's outputs stay as they are
        (tmp_path / table.name).mkdir()
        shutil.copy(table.path(out, name), table.path(tmp_path, name))
    built = _table(out, "triplets", name)
    monkeypatch.setattr(summary, "IMAGES_PER_SLICE", 3)
    result = summary.source_triplets(tmp_path, name, [name], license=built["license"][0],
                                     synthetic=bool(built["synthetic"][0]))
    again = pl.read_parquet(result.path)
    images = _table(out, "caption_batch", name)["record_id"].n_unique()
    assert pq.ParquetFile(result.path).metadata.num_row_groups == -(-images // 3) > 2
    assert again.sort("triplet_id").equals(built.sort("triplet_id"))


def test_rois_built_by_two_processes_equal_the_table_built_by_one(pipeline, monkeypatch):
    """The ROI stage cuts a shard into slices spread over worker processes, each with its own
    experts: the slices, in order, are the serial table (here below the size at which it would
    split by itself)."""
    from medtrinity_assets.ingest.registry import find_source
    from medtrinity_assets.rois import parallel

    out, _ = pipeline
    monkeypatch.setattr(parallel, "MIN_PARALLEL_IMAGES", 0)
    origins = set()
    for name in ("mr_head_multiframe", "synthetic_phantoms"):
        images = _table(out, "preprocessed_images", name)
        spec = find_source(pipeline_registry(), name)
        result, _ = parallel.build_roi_set_parallel(images, spec, out, experts_dir=out / "expert_models", workers=2)
        serial = _table(out, "roi_set", name)
        assert result.rois.equals(serial), name
        _, slices = parallel.roi_set_slices(images, spec, out, experts_dir=out / "expert_models", workers=2,
                                            images_per_slice=7)  # slices stream, two at a time
        parts = list(slices)
        assert len(parts) == -(-images.height // 7) and pl.concat([p.rois for p in parts]).equals(serial), name
        origins |= set(serial["origin"])
    assert "mask" in origins and any(o.startswith("expert:") for o in origins), origins  # experts ran in the workers


def test_description_checks_by_two_processes_equal_the_table_checked_by_one(pipeline, monkeypatch):
    """A shard's descriptions are checked in slices of whole images, read from disk by each process
    (this one and a worker); the slices, concatenated in order, are the table checked in one process
    at once, and slicing never splits an image."""
    from medtrinity_assets.captioning import check_captions, parallel_checks
    from medtrinity_assets.captioning.inputs import describable_rois, read_caption_inputs
    from medtrinity_assets.core.workers import image_slices
    from medtrinity_assets.privacy import identifier_store

    out, _ = pipeline
    monkeypatch.setattr(parallel_checks, "MIN_PARALLEL_ROWS", 0)
    name = "synthetic_phantoms"
    phi = identifier_store(out).matcher(name)
    captions = _table(out, "caption_batch", name)
    whole = check_captions(captions, {(i.record_id, i.roi_id): i for i in read_caption_inputs(out, name)},
                           phi_values=phi)
    slices = image_slices(describable_rois(out, name), 3)
    assert len(slices) > 2 and sum(map(len, slices)) == captions["record_id"].n_unique()
    batches = list(parallel_checks.check_shard(out, name, phi_values=phi, workers=2, images_per_slice=3))
    assert len(batches) == len(slices)
    assert [b["record_id"].unique(maintain_order=True).to_list() for b in batches] == slices
    assert pl.concat(batches).equals(whole)
    assert whole.equals(_table(out, "caption_quality", name))


def test_descriptions_by_two_processes_equal_the_table_one_process_writes_and_resume(pipeline, tmp_path):
    """A CPU-bound captioner describes a shard in slices of whole images, each read, hashed, described
    and written as chunk parts by one process (this one and a worker): the table is the one written
    by one process, the parts are gone, a rerun describes nothing again, and a run killed after some
    slices resumes from their parts."""
    from medtrinity_assets.captioning import EmbeddedCaptioner, parallel_batch
    from medtrinity_assets.captioning.backends.openai_compatible import OpenAICompatibleCaptioner
    from medtrinity_assets.captioning.batch import parts_dir
    from medtrinity_assets.captioning.inputs import describable_rois
    from medtrinity_assets.core.workers import image_slices

    out, _ = pipeline
    name = "synthetic_phantoms"
    serial = _table(out, "caption_batch", name)
    rois = describable_rois(out, name)
    written_at = [c for c in serial.columns if c != "created_at"]
    path = tmp_path / "captions.parquet"

    def describe():
        return parallel_batch.describe_shard_in_workers(out, name, rois, EmbeddedCaptioner(), path, workers=2,
                                                        chunk_size=4, images_per_slice=3)

    result = describe()
    table = pl.read_parquet(path)
    assert table.select(written_at).equals(serial.select(written_at))
    assert not parallel_batch._handoff_dir(path).exists()  # the slices' files are gone with the table written
    assert (result.total, result.computed, result.cached, result.failed) == (len(rois), len(rois), 0, 0)
    assert result.chunks_written >= len(image_slices(rois, 3)) > 2 and not parts_dir(path).exists()
    again = describe()
    assert (again.computed, again.cached, again.chunks_written) == (0, len(rois), 0)
    assert pl.read_parquet(path).equals(table)  # cached rows are kept as they were, times included

    path.unlink()  # a run killed after its first slice left only that slice's parts
    first = image_slices(rois, 3)[0]
    handoff = tmp_path / "first_slice.parquet"
    parallel_batch.describe_images(str(out), name, first, EmbeddedCaptioner(), str(path), [], 4, True, str(handoff))
    done = pl.read_parquet(handoff)
    assert parts_dir(path).exists() and not path.exists()
    resumed = describe()
    assert (resumed.cached, resumed.computed) == (done.height, len(rois) - done.height)
    assert pl.read_parquet(path).select(written_at).equals(serial.select(written_at))

    assert parallel_batch.runs_in_workers(EmbeddedCaptioner(), 5000, 2)
    assert not parallel_batch.runs_in_workers(EmbeddedCaptioner(), 5000, 1)
    assert not parallel_batch.runs_in_workers(EmbeddedCaptioner(), 100, 2)  # a worker costs more than it saves
    assert not OpenAICompatibleCaptioner.runs_in_workers  # a server's client stays in one process
