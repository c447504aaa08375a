"""The one encode driver: lease -> prepare -> regions -> lease checks -> finish.

Whoever runs the regions (a Dask cluster for the command line, Prefect tasks under
Prefect, a plain loop in tests) supplies only a ``RegionMapper``: given the job and the
plan, it runs ``encode_region`` for every region still to do, anywhere, and yields each
region's manifest as it completes. Everything else happens here, once:

1. refuse a keystore root that shares the public root, before anything is written;
2. open what the run needs (``EncodeContext``: model.pt read once, k' settled, the
   secrets resolved once, here only: workers get keys derived from them,
   ``RegionKeys``) and make every other check that can refuse the run
   (``check_encode``: a live lease, the published mechanism, the stores there; the
   noise fit is found, verified or fitted in memory), still writing nothing;
3. take the version's lease, so one run writes a version at a time;
4. ``prepare`` the stores and map the regions; every region's commit and done-marker is
   fenced by the lease (a worker reads it back first), so a run whose lease was taken
   over stops at its next write;
5. ``finish``: mark both stores complete and move the ``current`` pointers.

Re-running after a crash redoes only the regions without a done-marker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from tqdm.auto import tqdm

from imambig.access.keystore import assert_separate_roots
from imambig.stages.encode.plan import EncodeContext, EncodeJob, Plan, RegionManifest
from imambig.stages.encode.progress import Throughput
from imambig.stages.encode.region_keys import RegionKeys
from imambig.stages.encode.regions import check_encode, encode_region, finish, prepare
from imambig.stages.versions import lease_location
from imambig.stores.lease import LEASE_TTL_S, Lease, LeaseLost


class RegionMapper(Protocol):
    """How regions run: ``map`` calls ``encode_region(job, plan, start, stop, keys)`` for
    each of ``plan.regions`` and yields the manifests in completion order. ``keys`` are
    secret: they may travel only as task arguments to workers the owner trusts."""

    workers: int  # how many run in parallel (known once mapping has started)

    def map(self, job: EncodeJob, plan: Plan, keys: RegionKeys) -> Iterator[RegionManifest]:
        ...


class SerialRegions:
    """Every region in this process, one after the other (tests, small jobs)."""

    workers = 1

    def map(self, job: EncodeJob, plan: Plan, keys: RegionKeys) -> Iterator[RegionManifest]:
        for start, stop in plan.regions:
            yield encode_region(job, plan, start, stop, keys)


@dataclass
class EncodeReport:
    plan: Plan
    manifests: list[RegionManifest] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0
    throughput: Throughput = field(default_factory=Throughput)

    @property
    def encoded(self) -> int:
        return sum(m.items for m in self.manifests if not m.skipped)

    @property
    def precision(self) -> str:
        return self.plan.precision

    def summary(self) -> str:
        p = self.plan
        rate = self.encoded / self.seconds if self.seconds else 0.0
        return "\n".join([
            f"public store: {p.public}",
            f"keystore:     {p.keystore}",
            f"{p.n_items:,} items in {len(self.manifests) + p.done} regions; encoded "
            f"{self.encoded:,} now ({p.done} regions were already done) in {self.seconds:.1f} s "
            f"({rate:.1f} images/s on {self.workers} workers)",
            *(f"  worker {r.worker}: {r.items:,} images, {r.overall:.1f} images/s"
              for r in self.throughput.workers()),
        ])


def _check(lease: Lease) -> None:
    if lease.lost:
        raise LeaseLost(f"lost the lease {lease.location} to another run; not finishing")


def run_encode(
    job: EncodeJob,
    regions: RegionMapper,
    *,
    overwrite: bool = False,
    progress: bool = True,
    on_region: Callable[[RegionManifest, int, int], None] | None = None,
    lease_ttl_s: float = LEASE_TTL_S,
) -> EncodeReport:
    """Encode every image of ``job`` not encoded yet; ``on_region(manifest, done,
    total)`` is called as each region completes (``done`` counts regions of earlier
    runs too)."""
    t0, run_started = time.perf_counter(), time.time()
    assert_separate_roots(job.public_root, job.keys_root)  # before anything is written
    context = EncodeContext.open(job)
    # Every refusal (settings, a live lease, the published mechanism, a store built
    # otherwise) comes before the first write: a refused run leaves nothing behind.
    fit = check_encode(context, overwrite=overwrite)
    with Lease(lease_location(context.job.keys_root, context.version), lease_ttl_s) as lease:
        # Workers check the lease before each commit (the fence), not only this process.
        plan = dataclasses.replace(prepare(context, overwrite=overwrite, fit=fit),
                                   fence=lease.fence())
        report = EncodeReport(plan)
        # What workers get of the secrets: derived keys for this model and keystore.
        keys = RegionKeys.derive(context.secrets, context.key_provider,
                                 context.info.model_id, plan.keystore)
        bar = tqdm(total=plan.n_items, initial=plan.done * plan.region_items,
                   disable=None if progress else True, unit="img", desc="encode")
        with contextlib.closing(regions.map(context.job, plan, keys)) as manifests:
            for manifest in manifests:
                if manifest.skipped and manifest.started >= run_started:
                    # Encoded in this run by a worker that died before it could report
                    # (its done-marker was in): this run's work all the same.
                    manifest = dataclasses.replace(manifest, skipped=False)
                report.manifests.append(manifest)
                report.throughput.add(manifest)
                bar.update(manifest.items)
                bar.set_postfix_str(report.throughput.postfix(), refresh=False)
                if on_region:
                    on_region(manifest, plan.done + len(report.manifests), plan.total)
                _check(lease)
        bar.close()
        report.workers = regions.workers
        _check(lease)
        lease.fence().check("finishing")
        finish(context, plan)
    report.seconds = time.perf_counter() - t0
    return report
