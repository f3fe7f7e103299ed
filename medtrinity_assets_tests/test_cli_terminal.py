"""What a user reads at the terminal: a summary that says what was made and where, one line per
problem, exit codes explained, and an instance that refuses a second output root."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtrinity_assets.cli import main


def _registry(tmp_path: Path, bad_file: bool = False) -> Path:
    root = tmp_path / "folder" / "images"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 56), dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    reg = tmp_path / "registry"
    reg.mkdir()
    (reg / "tiny.yaml").write_text(
        f"name: tiny\nlayout: image_folder\nroot: {root.parent}\nmodality: X-ray\norgan: chest\nlicense: test\n"
    )
    if bad_file:
        (reg / "bad.yaml").write_text("name: tiny2\nlayout: nope\nroot: .\nmodality: CT\norgan: head\nlicense: x\n")
    return reg


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_summary_says_what_was_made_and_where(tmp_path, home):
    reg, out = _registry(tmp_path), tmp_path / "out"
    code, stdout, stderr = _run(["build", "--sources", str(reg), "--out", str(out), "--until", "preprocessed_images"])
    assert code == 0, stderr
    assert "1 of 1 source(s) built" in stdout
    assert "manifest rows: 3 (2 images kept, 0 duplicates, 1 quarantined: undecodable 1)" in stdout
    assert f"tables: {out.resolve()}" in stdout
    assert f"pictures: {out.resolve()}/reports/<asset>/<source>/ (contact sheets" in stdout
    assert list((out / "reports" / "preprocessed_images" / "tiny").glob("*.png"))
    assert f"DAGSTER_HOME={home.resolve()} dagster dev -w" in stdout and "workspace.yaml" in stdout


def test_rejected_registry_file_is_named_and_the_exit_code_explained(tmp_path, home):
    reg, out = _registry(tmp_path, bad_file=True), tmp_path / "out"
    code, stdout, stderr = _run(["build", "--sources", str(reg), "--out", str(out), "--until", "preprocessed_images"])
    assert code == 1
    assert "rejected registry file: bad.yaml: field 'layout': " in stderr and "unknown layout 'nope'" in stderr
    assert "exit code 1: 1 registry file(s) rejected; everything else was built" in stderr
    assert "1 of 1 source(s) built" in stdout
    assert "Traceback" not in stderr + stdout


def test_a_file_of_another_kind_is_unsupported_and_a_fake_image_undecodable(tmp_path, home):
    reg, out = _registry(tmp_path), tmp_path / "out"
    (tmp_path / "folder" / "images" / "notes.txt").write_text("not an image")
    code, stdout, stderr = _run(["build", "--sources", str(reg), "--out", str(out), "--until", "preprocessed_images"])
    assert code == 0, stderr
    assert "4 (2 images kept, 0 duplicates, 2 quarantined: undecodable 1, unsupported_type 1)" in stdout
    code, stdout, _ = _run(["sql", "select relpath, reason from source_manifest where status = 'quarantined' "
                            "order by relpath", "--out", str(out)])
    assert code == 0
    assert "unsupported_type: .txt is not an image this layout reads (.png, .jpg" in stdout
    assert "undecodable: its content is not a PNG/JPEG/TIFF image" in stdout


def test_a_failed_source_is_not_called_built(tmp_path, home):
    reg, out = _registry(tmp_path), tmp_path / "out"
    (reg / "gone.yaml").write_text(f"name: gone\nlayout: image_folder\nroot: {tmp_path / 'flat'}\n"
                                   "modality: X-ray\norgan: chest\nlicense: test\n")
    (tmp_path / "flat").mkdir()  # a root without the images/ folder the layout reads
    code, stdout, stderr = _run(["build", "--sources", str(reg), "--out", str(out), "--until", "preprocessed_images"])
    assert code == 1
    assert "1 of 2 source(s) built" in stdout
    assert "FAILED gone (ingest): source 'gone': no images/ folder under" in stderr
    assert "exit code 1: 1 run(s) failed; 1 of 2 source(s) built" in stderr
    assert "everything else" not in stderr and "Traceback" not in stderr + stdout


def test_sources_names_a_root_its_layout_cannot_read(tmp_path):
    reg = _registry(tmp_path)
    (reg / "flat.yaml").write_text(f"name: flat\nlayout: image_folder\nroot: {tmp_path / 'flat'}\n"
                                   "modality: X-ray\norgan: chest\nlicense: test\n")
    (reg / "nowhere.yaml").write_text(f"name: nowhere\nlayout: image_folder\nroot: {tmp_path / 'none'}\n"
                                      "modality: X-ray\norgan: chest\nlicense: test\n")
    (tmp_path / "flat").mkdir()
    code, stdout, stderr = _run(["sources", "--sources", str(reg)])
    assert code == 1
    assert {ln.split()[0] for ln in stdout.splitlines()} == {"flat", "nowhere", "tiny"}
    assert f"UNREADABLE source 'flat': no images/ folder under {tmp_path / 'flat'}" in stderr
    assert f"UNREADABLE source 'nowhere': root {tmp_path / 'none'} does not exist" in stderr
    assert "exit code 1: 2 source root(s) missing what the layout reads" in stderr
    assert _run(["sources", "--sources", str(_registry(tmp_path / "again"))])[0] == 0


def test_an_instance_refuses_a_second_output_root(tmp_path, home):
    reg = _registry(tmp_path)
    first, second = tmp_path / "out_a", tmp_path / "out_b"
    assert _run(["build", "--sources", str(reg), "--out", str(first), "--until", "preprocessed_images"])[0] == 0
    code, stdout, stderr = _run(["build", "--sources", str(reg), "--out", str(second), "--until", "preprocessed_images"])
    assert code == 2
    (line,) = [ln for ln in stderr.splitlines() if ln.strip()]
    assert f"holds the runs of --out {first.resolve()}" in line
    assert f"DAGSTER_HOME={second.resolve() / '.dagster_home'}" in line
    assert not second.exists()


def test_dagster_dev_reads_the_output_root_the_instance_remembers(tmp_path, home):
    from medtrinity_assets.defs.resources import default_resources

    reg, out = _registry(tmp_path), tmp_path / "out"
    assert _run(["build", "--sources", str(reg), "--out", str(out), "--until", "preprocessed_images"])[0] == 0
    resources = default_resources()  # what the code location loads with DAGSTER_HOME set
    assert Path(resources["storage"].out_dir) == out.resolve()
    assert Path(resources["registry"].registry_dir) == reg.resolve()


def test_the_progress_bar_counts_every_shard_run_of_a_sharded_source(tmp_path, home):
    reg, out = _registry(tmp_path), tmp_path / "out"
    (reg / "tiny.yaml").write_text((reg / "tiny.yaml").read_text() + "shard_size: 1\n")
    code, stdout, stderr = _run(["build", "--sources", str(reg), "--out", str(out), "--until", "preprocessed_images"])
    assert code == 0, stderr
    from medtrinity_assets.core.parts import shard_count

    shards = shard_count(out, "tiny")
    assert shards == 3
    last = stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert f"{shards}/{shards}" in last, last  # one ingestion run per shard, none beyond the total


def test_the_progress_line_shows_what_the_run_in_progress_logged(tmp_path, monkeypatch):
    """A step that runs for minutes (a VQA set's fine-tuning) moves no run counter: the newest
    message its asset logged is read back from the instance while the run is in progress, and
    the watcher thread shows each new one once."""
    import threading

    import dagster as dg

    from medtrinity_assets.defs.progress import RunMessages, latest_run_message

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    shown: list[str] = []
    seen = threading.Event()

    def show(message: str) -> None:
        shown.append(message)
        seen.set()

    @dg.op
    def fine_tune(context) -> str | None:
        context.log.debug("below INFO: not shown")
        context.log.info("fine-tuning demo:\n pretrained, seed 1")
        context.log.debug("below INFO: not shown either")
        assert seen.wait(timeout=30), "the watcher showed nothing while the run was in progress"
        return latest_run_message(context.instance)

    @dg.job
    def vqa() -> None:
        fine_tune()

    with dg.DagsterInstance.get() as instance:
        assert latest_run_message(instance) is None  # no run in progress
        watcher = RunMessages(show, interval_s=0.2).start()
        try:
            result = vqa.execute_in_process(instance=instance)
        finally:
            watcher.stop()
        assert result.success
        assert result.output_for_node("fine_tune") == "fine-tuning demo: pretrained, seed 1"
        assert shown == ["fine-tuning demo: pretrained, seed 1"]
        assert latest_run_message(instance) is None  # the run ended
