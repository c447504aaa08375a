"""Honest progress of a bulk encode: images/s per worker, over the last minute and over
the run, from the regions' own manifests (start and end times measured on the workers).

A region's items count when it finishes; a rate over a window counts each finished
region with the share of its span that lies in the window. The CLI shows the summary beside its progress bar, the
encode flow publishes the table as a Prefect artifact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from imambig.stages.encode.images import StageTimes
from imambig.stages.encode.plan import RegionManifest

WINDOW_S = 60.0  # "the last minute"


def _overlap(m: RegionManifest, start: float, end: float) -> float:
    """Share of region ``m``'s span (started..finished) within start..end."""
    span = m.finished - m.started
    if span <= 0:
        return float(start <= m.finished <= end)
    return max(0.0, min(m.finished, end) - max(m.started, start)) / span


@dataclass
class WorkerRate:
    worker: str
    items: int  # encoded by this worker in this run
    overall: float  # images/s since its first region started
    recent: float  # images/s over the last WINDOW_S (or since it started, if sooner)


@dataclass
class Throughput:
    """Manifests of one run, as they complete."""

    window_s: float = WINDOW_S
    manifests: list[RegionManifest] = field(default_factory=list)

    def add(self, manifest: RegionManifest) -> None:
        if not manifest.skipped:
            self.manifests.append(manifest)

    def _rate(self, done: list[RegionManifest], now: float) -> tuple[float, float]:
        first = min(m.started for m in done)
        overall = sum(m.items for m in done) / max(now - first, 1e-9)
        since = max(first, now - self.window_s)
        # a region counts with the share of its span that falls in the window
        recent = sum(m.items * _overlap(m, since, now) for m in done) / max(now - since, 1e-9)
        return overall, recent

    def workers(self, now: float | None = None) -> list[WorkerRate]:
        now = time.time() if now is None else now
        by_worker: dict[str, list[RegionManifest]] = {}
        for m in self.manifests:
            by_worker.setdefault(m.worker or "?", []).append(m)
        return [WorkerRate(w, sum(m.items for m in done), *self._rate(done, now))
                for w, done in sorted(by_worker.items())]

    def total(self, now: float | None = None) -> tuple[float, float]:
        """(overall, last-minute) images/s of all workers together."""
        now = time.time() if now is None else now
        return self._rate(self.manifests, now) if self.manifests else (0.0, 0.0)

    def stages(self) -> StageTimes:
        times = StageTimes()
        for m in self.manifests:
            times.add(m.times)
        return times

    def postfix(self, now: float | None = None) -> str:
        """One line beside a progress bar: total and per-worker last-minute rates."""
        if not self.manifests:
            return ""
        overall, recent = self.total(now)
        each = " ".join(f"{r.recent:.0f}" for r in self.workers(now))
        return f"{recent:.1f} img/s last min, {overall:.1f} overall; per worker {each}"

    def markdown(self, now: float | None = None) -> str:
        """The per-worker table and where the time went (the Prefect artifact)."""
        overall, recent = self.total(now)
        rows = [f"| {r.worker} | {r.items:,} | {r.recent:.1f} | {r.overall:.1f} |"
                for r in self.workers(now)]
        times = self.stages().to_dict()
        spent = sum(times.values()) or 1.0
        stage_rows = [f"| {name} | {seconds:.1f} | {100 * seconds / spent:.0f} % |"
                      for name, seconds in times.items()]
        return "\n".join([
            "# Encoding throughput", "",
            f"All workers: **{recent:.1f} images/s** over the last minute, "
            f"{overall:.1f} over the run.", "",
            "| worker | images | images/s, last minute | images/s, overall |",
            "|---|---|---|---|", *rows, "",
            "| stage | worker seconds | share |", "|---|---|---|", *stage_rows])
