"""What the run in progress is doing, for a terminal: a single step can run for minutes (the
fine-tuning of a VQA set, a large source's ROIs), and a progress bar that counts runs would stand
still meanwhile. The newest message the run's assets logged (``context.log.info``) is read back
from the instance's event log and shown beside the bar.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import dagster as dg

#: events read back per look (the newest first); a step logs far fewer between two looks
LOOK_BACK = 50


def latest_run_message(instance: dg.DagsterInstance) -> str | None:
    """The newest message an asset of the run in progress logged at INFO or above, or None."""
    runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=1)
    if not runs:
        return None
    records = instance.get_records_for_run(runs[0].run_id, limit=LOOK_BACK, ascending=False).records
    for record in records:
        entry = record.event_log_entry
        if entry.dagster_event is None and entry.level >= logging.INFO and entry.user_message:
            return " ".join(entry.user_message.split())
    return None


class RunMessages:
    """Calls ``show`` with :func:`latest_run_message` every ``interval_s`` seconds, from a thread of
    its own, until :meth:`stop` (a message is shown once, when it changes)."""

    def __init__(self, show: Callable[[str], None], interval_s: float = 2.0) -> None:
        self._show = show
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="medtrinity-run-messages", daemon=True)

    def start(self) -> RunMessages:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        last = None
        with dg.DagsterInstance.get() as instance:
            while not self._stopped.wait(self._interval_s):
                try:
                    message = latest_run_message(instance)
                except Exception:  # noqa: BLE001 - a progress line never stops a build
                    continue
                if message and message != last:
                    self._show(message)
                    last = message
