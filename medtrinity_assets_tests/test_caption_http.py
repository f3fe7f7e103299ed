"""The OpenAI-compatible backend against a real local HTTP server with injected faults."""

from __future__ import annotations

import logging

import polars as pl
import pytest

from medtrinity_assets.captioning import check_captions, make_captioner, make_judge, run_caption_batch
from medtrinity_assets.captioning.backends.base import Captioner, CaptionerConfigError
from medtrinity_assets.captioning.backends.openai_compatible import ChatClient, OpenAICompatibleCaptioner
from medtrinity_assets.captioning.prompt import build_user_text
from medtrinity_assets.captioning.samples import realistic_inputs
from medtrinity_assets_tests.chat_server import ChatServer, tag_for

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}


def _captioner(urls, **kw) -> OpenAICompatibleCaptioner:
    opts = {"api_key_env": None, "max_in_flight": 8, "timeout_s": 5.0, "max_retries": 4, **FAST, **kw}
    return OpenAICompatibleCaptioner(urls if isinstance(urls, list) else [urls], "test-vlm", **opts)


def _assert_own_replies(items, results):
    """Each ok caption came from its own request (the server echoes a hash of the prompt)."""
    for item, res in zip(items, results, strict=True):
        if res.status == "ok":
            assert f"tag={tag_for(build_user_text(item))}" in res.text


def test_all_answered_in_order_with_bounded_in_flight():
    items = realistic_inputs(40, seed=1)
    with ChatServer(latency_s=0.03) as srv:
        cap = _captioner(srv.base_url, max_in_flight=8)
        results = cap.caption(items)
        assert [r.status for r in results] == ["ok"] * 40
        _assert_own_replies(items, results)
        assert srv.stats.requests == 40
        assert srv.stats.max_in_flight == 8  # the semaphore is the only limit
        assert sum(srv.stats.tags.values()) == 40 and max(srv.stats.tags.values()) == 1
        assert set(results[0].facets) == {"modality", "organ", "roi_location", "roi_texture", "relationship"}


def test_retry_after_is_honoured():
    items = realistic_inputs(1)
    with ChatServer(plan=["429"], retry_after_s=0.6) as srv:
        cap = _captioner(srv.base_url)
        [res] = cap.caption(items)
        assert res.status == "ok"
        (t429, a1, _), (t_ok, a2, _) = srv.stats.timeline
        assert (a1, a2) == ("429", "ok")
        assert t_ok - t429 >= 0.55  # backoff alone would be <= 0.05 s
        assert cap.client.stats.retry_after_waits == 1


def test_faults_end_answered_or_failed_without_duplicates():
    items = realistic_inputs(60, seed=2)
    rates = {"500": 0.15, "503": 0.05, "drop": 0.15, "429": 0.1, "garbage": 0.05}
    with ChatServer(rates=rates, retry_after_s=0.01, seed=3, latency_s=0.005) as srv:
        cap = _captioner(srv.base_url, max_retries=10)
        results = cap.caption(items)
        assert len(results) == 60
        assert all(r.status == "ok" for r in results)  # 11 attempts make a failure vanishingly rare
        _assert_own_replies(items, results)
        faults = sum(n for a, n in srv.stats.actions.items() if a != "ok")
        assert faults > 10
        assert srv.stats.requests == 60 + faults == 60 + cap.client.stats.retries
        assert len({r.text for r in results}) == 60


def test_retries_are_bounded_and_failure_recorded():
    items = realistic_inputs(5)
    with ChatServer(default="500") as srv:
        cap = _captioner(srv.base_url, max_retries=3)
        results = cap.caption(items)
        assert all(r.status == "failed" for r in results)
        assert srv.stats.requests == 5 * 4
        assert "HTTP 500" in results[0].error and "gave up after 4 attempts" in results[0].error


def test_dropped_connections_and_timeouts_are_retried_then_fail():
    with ChatServer(default="drop") as srv:
        [res] = _captioner(srv.base_url, max_retries=2).caption(realistic_inputs(1))
        assert res.status == "failed" and "connection error" in res.error
        assert srv.stats.requests == 3
    with ChatServer(latency_s=1.0) as srv:
        [res] = _captioner(srv.base_url, max_retries=1, timeout_s=0.15).caption(realistic_inputs(1))
        assert res.status == "failed" and "timeout" in res.error


def test_json_repair_once_then_fail_with_raw_kept():
    items = realistic_inputs(6)
    with ChatServer(default="malformed") as srv:
        cap = _captioner(srv.base_url)
        results = cap.caption(items)
        assert all(r.status == "ok" for r in results)
        assert srv.stats.requests == 12 and cap.client.stats.repairs == 6
        assert "--- repair reply ---" in results[0].raw
        _assert_own_replies(items, results)  # the paragraph before the broken JSON is kept
    with ChatServer(default="malformed_always") as srv:
        results = _captioner(srv.base_url).caption(items)
        assert all(r.status == "failed" for r in results)
        assert srv.stats.requests == 12  # exactly one repair per item
        assert "cannot format" in results[0].raw and "after one repair" in results[0].error


def test_api_key_sent_but_never_logged_or_in_errors(monkeypatch, caplog):
    secret = "sk-test-5f3a9c1e77d24b0b"
    monkeypatch.setenv("MTRI_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with ChatServer(plan=["500", "drop"], default="echo_auth_400") as srv:
        cap = _captioner(srv.base_url, api_key_env="MTRI_TEST_KEY")
        [res] = cap.caption(realistic_inputs(1))
        assert srv.stats.auth_headers == [f"Bearer {secret}"] * 3
    assert res.status == "failed" and "HTTP 400" in res.error
    assert secret not in res.error and secret not in (res.raw or "")
    assert secret not in caplog.text
    assert "retry" in caplog.text  # the retries were logged, without the key
    assert secret not in repr(cap.params)


def test_several_base_urls_share_load_and_survive_a_dead_one():
    items = realistic_inputs(40, seed=4)
    with ChatServer(latency_s=0.02) as a, ChatServer(latency_s=0.02) as b:
        cap = _captioner([a.base_url, b.base_url], max_in_flight=8)
        assert all(r.status == "ok" for r in cap.caption(items))
        assert a.stats.requests + b.stats.requests == 40
        assert min(a.stats.requests, b.stats.requests) >= 12
    with ChatServer(default="drop") as dead, ChatServer() as alive:
        cap = _captioner([dead.base_url, alive.base_url], max_in_flight=4)
        results = cap.caption(items[:12])
        assert all(r.status == "ok" for r in results)
        assert alive.stats.requests == 12


def test_batch_over_http_has_no_duplicates_and_resumes(tmp_path):
    items = realistic_inputs(50, seed=5)
    with ChatServer(rates={"500": 0.2, "drop": 0.1}, seed=7) as srv:
        cap = _captioner(srv.base_url, max_retries=8)
        res = run_caption_batch(items, cap, tmp_path / "c.parquet", chunk_size=16)
        assert res.ok == 50 and res.computed == 50
        df = pl.read_parquet(tmp_path / "c.parquet")
        assert df.height == 50 and df.select("record_id", "roi_id").n_unique() == 50
        before = srv.stats.requests
        again = run_caption_batch(items, cap, tmp_path / "c.parquet", chunk_size=16)
        assert again.computed == 0 and srv.stats.requests == before
        params = df["params"][0]
        assert '"temperature": 0.1' in params and '"max_tokens": 1024' in params


def test_judge_scores_each_facet_with_the_same_client():
    items = realistic_inputs(4)
    from medtrinity_assets.captioning import EmbeddedCaptioner

    results = EmbeddedCaptioner().caption(items)
    df = pl.DataFrame(
        [{"record_id": i.record_id, "roi_id": i.roi_id, "status": r.status, "text": r.text,
          "retrieved_chunk_ids": i.chunk_ids, **{f"facet_{k}": v for k, v in r.facets.items()}}
         for i, r in zip(items, results, strict=True)]
    )
    with ChatServer(plan=["429"], retry_after_s=0.01) as srv:
        judge = make_judge({"enabled": True, "base_urls": [srv.base_url], "model": "judge", "api_key_env": None,
                            "max_in_flight": 2})
        assert isinstance(judge.client, ChatClient)
        q = check_captions(df, {i.key: i for i in items}, judge=judge)
    assert q["judge_modality"].to_list() == [9.0] * 4 and q["judge_relationship"].to_list() == [5.0] * 4
    assert q["judge_mean"].to_list() == [7.0] * 4
    assert q["passed"].all()


def test_config_errors():
    with pytest.raises(CaptionerConfigError, match="base URL"):
        make_captioner({"backend": "openai_compatible", "model": "m", "base_urls": []})
    with pytest.raises(CaptionerConfigError, match="http"):
        make_captioner({"backend": "openai_compatible", "model": "m", "base_urls": ["ftp://x"]})
    with pytest.raises(CaptionerConfigError, match="model"):
        make_captioner({"backend": "openai_compatible", "model": "", "base_urls": ["http://127.0.0.1:9/v1"]})
    cap = make_captioner({"backend": "openai_compatible", "model": "m", "base_urls": ["http://127.0.0.1:9/v1"]})
    assert cap.params == {"temperature": 0.1, "max_tokens": 1024, "send_image": True}
    assert isinstance(cap, Captioner) and cap.name == "openai_compatible"


def test_image_sent_as_data_url(tmp_path):
    import dataclasses

    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((32, 32), 90, dtype=np.uint8)).save(tmp_path / "x.png")
    items = [dataclasses.replace(i, image_path="x.png", out_root=str(tmp_path), bbox_xyxy=[4, 4, 20, 20])
             for i in realistic_inputs(3)]
    with ChatServer() as srv:
        results = _captioner(srv.base_url).caption(items)
        assert all(r.status == "ok" for r in results) and srv.stats.images == 3
    broken = dataclasses.replace(items[0], image_path="missing.png")
    with ChatServer() as srv:
        [res] = _captioner(srv.base_url).caption([broken])
        assert res.status == "failed" and "image unreadable" in res.error and srv.stats.requests == 0


def test_descriptions_that_fail_a_check_fall_back_to_the_embedded_one(tmp_path):
    """The server always describes a homogeneous hyperdense CT region in the left third of a head
    image: kept for the region that is one, replaced (with the reason) for every other region."""
    import dataclasses

    import numpy as np

    from medtrinity_assets.captioning.guard import GuardedCaptioner
    from medtrinity_assets.rois.rle import rle_encode, rle_json

    mask = np.zeros((256, 256), bool)
    mask[100:140, 20:60] = True
    fits = dataclasses.replace(
        realistic_inputs(1, seed=2)[0], modality="CT", organ="head", label="haemorrhage", origin="mask",
        mask_rle=rle_json(rle_encode(mask)), bbox_norm=[20 / 256, 100 / 256, 60 / 256, 140 / 256],
        horizontal="left", vertical="middle", patient_lr=None, patient_ap=None, intensity_word="hyperdense",
        texture_homogeneity_word="homogeneous", roi_count=1, relations=[], inside_label=None, passages=[],
    )
    items = [fits, *realistic_inputs(12, seed=9)[1:]]
    with ChatServer() as srv:
        guarded = GuardedCaptioner(_captioner(srv.base_url))
        res = run_caption_batch(items, guarded, tmp_path / "c.parquet", chunk_size=8)
    df = pl.read_parquet(tmp_path / "c.parquet")
    kept = df.filter(pl.col("fallback_reason").is_null())
    replaced = df.filter(pl.col("fallback_reason").is_not_null())
    assert res.fallbacks == replaced.height and replaced.height >= 10
    assert kept["record_id"].to_list() == [fits.record_id] and kept["backend"][0] == "openai_compatible"
    assert set(replaced["backend"]) == {"embedded"} and replaced["raw"].str.contains("tag=").all()
    assert replaced["fallback_reason"].str.contains("modality|organ|position").all()
    q = check_captions(df, {i.key: i for i in items})
    assert q["passed"].all(), q.filter(~pl.col("passed"))["issues"].to_list()
