"""The Dagster web UI in a real browser: ``dagster dev`` on 127.0.0.1 over a temporary instance
with one demo source, headless Chromium (Debian's, driven by Selenium; nothing is downloaded)
materializes that source's ingestion assets from the asset page's launch dialog, waits on the
run page until the run succeeds, and finds the contact sheet the run made shown on its asset page
(the output root's reports served on 127.0.0.1, ``MEDTRINITY_REPORTS_URL`` naming them).
Screenshots go to ``$MEDTRINITY_TEST_ARTIFACTS/ui/`` (else ``test-artifacts/ui/``), with the
server's log.

Determinism: what starts work by itself is stopped in the instance before the server starts.
The registry sensor would launch an ingest run for the unbuilt source on the daemon's first tick,
and the automation sensor would launch the downstream assets once the source is ingested;
both are RUNNING by default and stopped with ``dagster sensor stop``, and the refresh schedule
is left stopped (``MEDTRINITY_REFRESH_CRON=off``). The source's partition is added directly, and
the test checks that the run it launched is the instance's only run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from medtrinity_assets.defs.reporting import REPORTS_URL_ENV
from medtrinity_assets_tests.ui_driver import (
    REPO_ROOT,
    Browser,
    DagsterDev,
    artifacts_dir,
    chromium_paths,
    free_port,
    headless_chrome,
)

pytestmark = pytest.mark.integration

SOURCE = "microscopy_cells"  # the smallest demo source: one micrograph, a table layout
ASSET = "source_manifest"  # with preprocessed_images: the ingestion multi-asset, op ingest_source_assets
GROUP = "ingest"
PICTURED = "preprocessed_images"  # the other half of the multi-asset: its contact sheet
LOCATION = "medtrinity_assets"
SENSOR = "source_registry_sensor"
WORKSPACE = REPO_ROOT / "workspace.yaml"
# The sensors and schedules of the code location that start in the RUNNING state, as JSON pairs.
LIST_RUNNING = """
import json
import dagster as dg
from medtrinity_assets.definitions import defs
print(json.dumps(
    [["sensor", s.name] for s in defs.sensors or [] if s.default_status == dg.DefaultSensorStatus.RUNNING]
    + [["schedule", s.name] for s in defs.schedules or [] if s.default_status == dg.DefaultScheduleStatus.RUNNING]
))
"""
INSTIGATORS = """query($repo: RepositorySelector!) {
  sensorsOrError(repositorySelector: $repo) { ... on Sensors { results { name sensorState { status } } } }
  schedulesOrError(repositorySelector: $repo) { ... on Schedules { results { name scheduleState { status } } } }
}"""
SERVER_TIMEOUT_S = 90
RUN_TIMEOUT_S = 180
UI_TIMEOUT_S = 30

# What Dagster's RunStatusTag can say (ui-core/src/runs/RunStatusTag.tsx).
RUN_DONE = {"Success", "Failure", "Canceled"}
RUN_STATUSES = RUN_DONE | {"Queued", "Not started", "Starting", "Started", "Suspended", "Managed", "Canceling"}

# Selectors (found by driving Dagster 1.13's UI): visible text, data-tooltip (set on asset and
# group node labels and on partition names), ARIA roles, and two plain class names (the popover's
# `dagster-popover`, the tags' `BaseTag`); never the generated CSS-module names (`Box_flex__RnMbF`).
GRAPH_NODE = "//*[local-name()='foreignObject']//*[@data-tooltip='{}']"
LAUNCH_DIALOG = "//*[@role='dialog'][contains(normalize-space(.), 'Launch runs to materialize')]"
PARTITION_PICKER = ".//*[normalize-space(text())='Select a partition or create one']"
POPOVER = "//*[contains(concat(' ', normalize-space(@class), ' '), ' dagster-popover ')]"
PARTITION_ITEM = POPOVER + "//*[@role='menuitem'][.//*[@data-tooltip='{}']]"
LAUNCHED_TOAST_LINK = "//a[contains(@href, '/runs/')][normalize-space(.)='View']"
STATUS_TAG = "//*[contains(concat(' ', normalize-space(@class), ' '), ' BaseTag ')]"


def _loaded_picture(driver, base_url: str):
    """The first displayed image the page loaded from ``base_url`` (a picture that did not load has
    no natural width), or None."""
    for img in driver.find_elements("xpath", f"//img[starts-with(@src, '{base_url}/')]"):
        if img.is_displayed() and driver.execute_script("return arguments[0].naturalWidth", img) > 0:
            return img
    return None


def _first_displayed(elements: list):
    return next((e for e in elements if e.is_displayed()), None)


@pytest.fixture()
def chromium() -> tuple[str, str]:
    pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[test]')")
    found = chromium_paths()
    if found is None:
        pytest.skip("no chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    return found


@pytest.fixture()
def reports_url(tmp_path) -> Iterator[tuple[str, Path]]:
    """The output root's ``reports`` folder served on 127.0.0.1 (as a team server serves it behind
    its authentication): its base URL, and the output root."""
    out = tmp_path / "out"
    (out / "reports").mkdir(parents=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                               str(out / "reports"), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}", out
    finally:
        # SIGKILL: a file server has nothing to finish, and a SIGTERM can be ignored by it: an ignored
        # signal stays ignored across exec, and a test worker that ran Dagster in process may have
        # SIGTERM mapped to SIGINT's disposition (seen once in CI: 10 s after SIGTERM, still running)
        server.kill()
        server.wait(timeout=10)


@pytest.fixture()
def ui_instance(tmp_path, demo_dir, demo_registry, reports_url) -> tuple[dict[str, str], Path]:
    """A fresh DAGSTER_HOME (the repo's dagster.yaml) whose medtrinity.json points at a temporary
    output root (its reports served, :data:`REPORTS_URL_ENV` naming them) and a registry holding
    one demo declaration; the sensors that start work by themselves stopped, the source's
    partition added."""
    import dagster as dg

    from medtrinity_assets.defs.partitions import SHARDS, SOURCES

    base_url, out = reports_url
    home, registry = tmp_path / "dagster_home", tmp_path / "registry"
    for folder in (home, registry):
        folder.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    declaration = (demo_registry / f"{SOURCE}.yaml").read_text().replace("root: ../demo/", f"root: {demo_dir}/")
    assert f"root: {demo_dir}/" in declaration, "the demo declaration's root is no longer ../demo/<name>"
    (registry / f"{SOURCE}.yaml").write_text(declaration)
    (home / "medtrinity.json").write_text(json.dumps({"out_dir": str(out), "registry_dir": str(registry)}))
    env = {**os.environ, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MEDTRINITY_REFRESH_CRON": "off",  # the shared-model refresh schedule: stopped by default
           REPORTS_URL_ENV: base_url}

    # Every sensor or schedule still running by default (the registry sensor, the automation
    # sensor) is stopped in the instance, as an operator would: `dagster sensor|schedule stop`.
    found = subprocess.run([sys.executable, "-c", LIST_RUNNING], cwd=REPO_ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert found.returncode == 0, f"listing the code location's sensors failed:\n{found.stderr}"
    running = [tuple(pair) for pair in json.loads(found.stdout.strip().splitlines()[-1])]
    assert ("sensor", SENSOR) in running, running
    for kind, name in running:
        stop = subprocess.run([sys.executable, "-m", "dagster", kind, "stop", name, "-w", str(WORKSPACE)],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, f"dagster {kind} stop {name} failed:\n{stop.stdout}\n{stop.stderr}"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(SOURCES.name, [SOURCE])
        instance.add_dynamic_partitions(SHARDS.name, ["000"])
    return env, out


@pytest.fixture()
def dagster_dev(ui_instance, tmp_path):
    env, _ = ui_instance
    server = DagsterDev(WORKSPACE, env, free_port(), tmp_path / "dagster-dev.log")
    try:
        yield server
    finally:
        server.stop()  # the whole process group, also when the test failed
        shutil.copy(server.log, artifacts_dir("ui") / "dagster-dev.log")


def test_materialize_one_partition_from_the_web_ui(chromium, ui_instance, dagster_dev):
    from selenium.common.exceptions import WebDriverException

    from medtrinity_assets.core.tables import SOURCE_MANIFEST

    _, out = ui_instance
    shots = artifacts_dir("ui")
    for old in [*shots.glob("*.png"), *shots.glob("failure-*.txt")]:
        old.unlink()
    timings: dict[str, float] = {"server_up_s": round(dagster_dev.wait_until_up(SERVER_TIMEOUT_S), 1)}
    base = dagster_dev.base
    states = dagster_dev.graphql(INSTIGATORS, {"repo": {"repositoryLocationName": LOCATION,
                                                        "repositoryName": "__repository__"}})
    running = [i["name"] for kind in ("sensorsOrError", "schedulesOrError") for i in states[kind]["results"]
               if (i.get("sensorState") or i.get("scheduleState"))["status"] == "RUNNING"]
    assert not running, f"sensors or schedules still running, they would launch runs of their own: {running}"
    t0 = time.monotonic()
    # Chromium's own temporary folder, short enough for its socket path (about 100 characters at
    # most, which pytest's tmp_path exceeds), removed with the browser
    browser_tmp = Path(tempfile.mkdtemp(prefix="mtc-"))
    driver = headless_chrome(*chromium, tmp=browser_tmp)
    ui = Browser(driver, shots)
    try:
        # The "join the community" dialog of a localhost server stays closed once dismissed.
        driver.get(f"{base}/server_info")
        driver.execute_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")

        # 1. The global asset graph: the groups, ingest among them.
        driver.get(f"{base}/asset-groups")
        ui.until("the global asset graph with the 'ingest' group",
                 lambda: _first_displayed(ui.xpath(GRAPH_NODE.format(GROUP))), UI_TIMEOUT_S)
        ui.shot("01-asset-graph")

        # 2. The ingest group's graph; select source_manifest, open it in the asset catalog.
        driver.get(f"{base}/locations/{LOCATION}/asset-groups/{GROUP}")
        ui.until(f"the {ASSET} node in the {GROUP} group's graph",
                 lambda: _first_displayed(ui.xpath(GRAPH_NODE.format(ASSET))), UI_TIMEOUT_S)
        ui.shot("02-ingest-group-graph")
        catalog_link = "//*[self::a or self::button][normalize-space(.)='View in Asset Catalog']"
        ui.click(f"the {ASSET} node to select it", lambda: _first_displayed(ui.xpath(GRAPH_NODE.format(ASSET))),
                 done=lambda: _first_displayed(ui.xpath(catalog_link)), again_after=5)
        ui.click("'View in Asset Catalog' in the selected node's panel",
                 lambda: _first_displayed(ui.xpath(catalog_link)),
                 done=lambda: re.search(rf"/assets/{ASSET}(\?|$)", driver.current_url), again_after=5)

        # 3. Materialize… (the multi-asset also materializes preprocessed_images: confirm).
        first = ui.click("the asset's 'Materialize…' button, then the launch dialog or the multi-asset notice",
                         lambda: ui.button("Materialize…") or ui.button("Materialize"),
                         done=lambda: _first_displayed(ui.xpath(LAUNCH_DIALOG)) or ui.button("Confirm"),
                         timeout=UI_TIMEOUT_S, again_after=10)
        if first.tag_name == "button":
            ui.shot("03-multi-asset-notice")
            ui.click("'Confirm' on the multi-asset notice", lambda: ui.button("Confirm"),
                     done=lambda: _first_displayed(ui.xpath(LAUNCH_DIALOG)))
        dialog = ui.until("the launch dialog", lambda: _first_displayed(ui.xpath(LAUNCH_DIALOG)))

        # 4. Pick the one partition, one key per dimension (shard 000 of the source; each picker a
        #    toggle: clicked once), close the picker, launch (once).
        def picker_closed() -> bool:
            if ui.xpath(POPOVER):
                title = ui.xpath(".//*[starts-with(normalize-space(text()), 'Launch runs to materialize')]", dialog)
                (title[0] if title else dialog).click()  # a click outside the popover closes it
                return False
            return True

        def choose(value: str) -> None:
            item = PARTITION_ITEM.format(value)
            for index in range(len(ui.xpath(PARTITION_PICKER, dialog)) or 1):
                ui.click(f"partition picker {index + 1}",
                         lambda i=index: ui.xpath(PARTITION_PICKER, dialog)[i] if len(ui.xpath(PARTITION_PICKER, dialog)) > i
                         else None, done=lambda: ui.xpath(POPOVER), again_after=10)
                deadline = time.monotonic() + 3  # the popover's items render shortly after it opens
                while _first_displayed(ui.xpath(item)) is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                if _first_displayed(ui.xpath(item)) is not None:
                    ui.click(f"partition '{value}' in the picker", lambda: _first_displayed(ui.xpath(item)),
                             done=lambda: any(c.is_selected() for c in ui.xpath(item + "//input[@type='checkbox']")))
                    ui.until("the partition picker to close", picker_closed, 10)
                    return
                ui.until("the partition picker to close", picker_closed, 10)
            raise AssertionError(f"no partition picker offers '{value}'")

        choose(SOURCE)
        choose("000")
        ui.until("an enabled 'Launch 1 run' button", lambda: ui.button("Launch 1 run", dialog))
        assert SOURCE in dialog.text and "1 partition" in dialog.text, dialog.text
        ui.shot("04-launch-dialog")
        link = ui.click("'Launch 1 run', then the 'Launched run … View' toast",
                        lambda: ui.button("Launch 1 run", dialog),
                        done=lambda: _first_displayed(ui.xpath(LAUNCHED_TOAST_LINK)))

        # 5. The "Launched run" toast links to the run page.
        href = link.get_attribute("href")
        run_id = re.search(r"/runs/([0-9a-f-]{36})", href).group(1)
        ui.shot("05-launched-toast", settle=False)  # the toast goes away after a few seconds
        timings["launched_s"] = round(time.monotonic() - t0, 1)
        try:
            link.click()
        except WebDriverException:  # the toast went away: follow its link
            driver.get(href)
        ui.until("the run page", lambda: run_id in driver.current_url)

        # 6. Wait on the run page for a final status (the page updates itself).
        def run_status() -> str | None:
            for tag in ui.xpath(STATUS_TAG):
                text = " ".join(tag.text.split())
                if text in RUN_STATUSES:
                    return text
            return None

        status = ui.until(f"run {run_id[:8]} to finish", lambda: (s := run_status()) in RUN_DONE and s,
                          RUN_TIMEOUT_S, poll=1)
        ui.shot("06-run-" + status.lower())
        timings["run_done_s"] = round(time.monotonic() - t0, 1)

        # 7. The contact sheet the run made, shown on the asset page itself (by its URL), not behind
        #    "[Show Markdown]".
        if status == "Success":
            base_url = ui_instance[0][REPORTS_URL_ENV]
            driver.get(f"{base}/assets/{PICTURED}")
            picture = ui.until(f"the contact sheet on the {PICTURED} page, loaded from {base_url}",
                               lambda: _loaded_picture(driver, base_url), UI_TIMEOUT_S)
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", picture)
            ui.shot("07-contact-sheet-on-the-asset-page")
    except BaseException:
        # Whatever failed (a timeout has its own screenshot already): the page as it was.
        with contextlib.suppress(Exception):
            ui.shot("failure-last-page", settle=False)
            (shots / "failure-last-page.txt").write_text(
                f"{driver.current_url}\n\n{driver.find_element('tag name', 'body').text}\n\n{traceback.format_exc()}")
        raise
    finally:
        driver.quit()
        shutil.rmtree(browser_tmp, ignore_errors=True)

    # Second opinion from the GraphQL API, and the table on disk.
    run = dagster_dev.graphql("query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status "
                              "tags { key value } } ... on PythonError { message } } }", {"id": run_id})["runOrError"]
    assert run["__typename"] == "Run", run
    if status != "Success" or run["status"] != "SUCCESS":
        pytest.fail(f"run {run_id} ended {status} (GraphQL: {run['status']}); see {shots} and "
                    f"{shots / 'dagster-dev.log'}\n{dagster_dev.log_tail()}")
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags.get("dagster/partition") == f"000|{SOURCE}" and tags.get("dagster/from_ui") == "true", tags
    runs = dagster_dev.graphql("{ runsOrError { __typename ... on Runs { results { runId } } } }")["runsOrError"]
    assert [r["runId"] for r in runs["results"]] == [run_id], "runs the UI did not launch (a sensor or schedule running?)"
    assert SOURCE_MANIFEST.path(out, SOURCE).is_file()
    (shots / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    assert {p.name for p in ui.saved} >= {"01-asset-graph.png", "04-launch-dialog.png", "06-run-success.png",
                                          "07-contact-sheet-on-the-asset-page.png"}
