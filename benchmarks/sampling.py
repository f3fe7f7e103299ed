"""Peak RSS and CPU seconds of a process tree, sampled in a thread (shared by the benchmarks)."""

from __future__ import annotations

import threading
import time


class TreeSampler:
    """Samples a process (default: this one) and its descendants every ``interval`` seconds
    (psutil): :attr:`peak` is the largest summed RSS seen, :meth:`cpu` the tree's CPU seconds.

    CPU of pool workers (grandchildren under a forkserver) is invisible to getrusage, so it is
    taken from the last sample of each pid.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.05) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        #: the largest RSS of the sampled process alone (the build process, without its workers)
        self.own_peak = 0
        #: (time.time(), summed RSS, CPU seconds of the tree so far) of every sample
        self.timeline: list[tuple[float, int, float]] = []
        self.interval = interval
        self._cpu: dict[int, float] = {}
        self._own = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    total += rss
                    if p is self.proc:
                        self._own = rss
                    t = p.cpu_times()
                with self._lock:
                    self._cpu[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)
        with self._lock:
            self.own_peak = max(self.own_peak, self._own)
            cpu = sum(self._cpu.values())
        self.timeline.append((time.time(), total, cpu))

    def peak_between(self, start: float, end: float) -> int:
        """The largest summed RSS sampled between two ``time.time()`` stamps (0 when none was)."""
        return max((rss for t, rss, _ in self.timeline if start <= t <= end), default=0)

    def cores_between(self, start: float, end: float) -> float:
        """The tree's CPU seconds per second of wall time between two ``time.time()`` stamps
        (0 when fewer than two samples fall between them)."""
        inside = [(t, cpu) for t, _, cpu in self.timeline if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def cpu(self) -> float:
        """CPU seconds of every process of the tree seen so far (a fresh sample first)."""
        self.sample()
        with self._lock:
            return sum(self._cpu.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
