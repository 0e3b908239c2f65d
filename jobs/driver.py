"""The backfill driver's loop over the dataset's rows, one class per layout (``jobs/backfill.py`` runs it): the
fused layout's rows are finished videos; the split layout's are analysed frames and each video's summary, gathered
per video and handed to a finish task once complete."""

from __future__ import annotations

import json
import logging
import pickle
import time
from dataclasses import dataclass, field

from framepipe import pipeline
from framepipe.errors import ErrorCode

from jobs import faults
from jobs.stages import FUSED_COLUMNS, AnalysedFrame, StageContext, VideoSummary, finish_video

log = logging.getLogger("framepipe.backfill")


@dataclass
class Pending:
    """One video's rows gathered by the driver until it is complete."""

    frames: dict[float, AnalysedFrame] = field(default_factory=dict)  # by pts: a retried task's rows count once
    summary: VideoSummary | None = None
    device: str = ""  # what analysed its frames
    pack: str = ""

    @property
    def complete(self) -> bool:
        return self.summary is not None and len(self.frames) >= self.summary.frames


class Driver:
    """What the driver does with the dataset's rows, one subclass per layout: the run's summary, where work ran,
    the object store's peak."""

    def __init__(self, args, ctx: StageContext):
        import ray

        self.args, self.ctx = args, ctx
        self.wall0 = time.time()
        self.summary = pipeline.RunSummary()
        self.placement: dict[str, set] = {"decode": set(), "analyzer": set()}
        self.first_output_s: float | None = None
        self.total_store = ray.cluster_resources().get("object_store_memory", 0)
        self.peak_store, self._sampled = 0.0, 0.0
        self.nodes = faults.Nodes()
        self.finish_retries = 0  # finish tasks the driver started again after Ray's own retries

    def drive(self, batches) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """After the last batch."""

    def sample_store(self) -> None:
        import ray

        if self.total_store and time.perf_counter() - self._sampled > 1.0:
            self._sampled = time.perf_counter()
            used = self.total_store - ray.available_resources().get("object_store_memory", 0)
            self.peak_store = max(self.peak_store, used)
        self.nodes.sample()

    def done(self, row: dict) -> None:
        """A video's result (``result_row`` and its times)."""
        self.summary.add(row["source"], row["status"], int(row["people"]), row["error"])
        self.first_output_s = min(self.first_output_s or row["finished"], row["finished"])
        log.info("%s: %s (started at +%.1f s, done at +%.1f s)", row["video_id"], row["error"] or row["status"],
                 row["started"] - self.wall0, row["finished"] - self.wall0)


class FusedDriver(Driver):
    """Each row is a finished video (the video actors wrote its outputs)."""

    def drive(self, batches) -> None:
        seen: set[str] = set()
        for batch in batches:
            for i, vid in enumerate(batch["video_id"]):
                if str(vid) in seen:  # a video's row once, whatever Ray re-ran
                    continue
                seen.add(str(vid))
                row = {k: batch[k][i].item() if hasattr(batch[k][i], "item") else batch[k][i] for k in FUSED_COLUMNS}
                self.summary.listed += 1
                self.placement["decode"].add(row["node"])
                self.placement["analyzer"].add(row["node"])
                if row["status"] == "skipped":
                    self.summary.skipped += 1
                else:
                    self.done(row)
            self.sample_store()


class SplitDriver(Driver):
    """Rows are analysed frames and each video's summary: gathered per video until complete, then a finish task
    (a Ray task; one lost with its node is retried by Ray elsewhere, its arguments live with the driver)."""

    def __init__(self, args, ctx: StageContext):
        import ray

        super().__init__(args, ctx)
        self.finish_task = ray.remote(finish_video).options(
            num_cpus=args.finish_cpus, max_retries=faults.FINISH_RETRIES,
            resources=json.loads(args.finish_resources) if args.finish_resources else None)
        self.pending: dict[str, Pending] = {}
        self.in_flight: list = []
        self.inputs: dict = {}  # finish task -> (video id, its rows, tries), until its result is in

    def drive(self, batches) -> None:
        for batch in batches:
            for i, vid in enumerate(batch["video_id"]):
                p = self.pending.setdefault(str(vid), Pending())
                if batch["last"][i]:
                    s: VideoSummary = pickle.loads(batch["summary"][i])
                    if p.summary is not None:
                        continue  # a retried decode task's second summary
                    p.summary = s
                    self.summary.listed += 1
                    self.placement["decode"].add(s.node)
                    if s.skipped:
                        self.summary.skipped += 1
                        del self.pending[str(vid)]
                        continue
                else:
                    pts = float(batch["pts"][i])
                    p.frames[pts] = AnalysedFrame(pts, batch["faces"][i], batch["jpeg"][i],
                                                  str(batch["error_code"][i]), str(batch["error_message"][i]))
                    p.device, p.pack = str(batch["device"][i]), str(batch["pack"][i])
                    self.placement["analyzer"].add(str(batch["node"][i]))
                if p.complete:
                    log.debug("%s: all frames analysed at +%.1f s", vid, time.time() - self.wall0)
                    self.submit(str(vid), p)
            self.collect(block=False)
            self.sample_store()

    def finish(self) -> None:
        for vid, p in list(self.pending.items()):  # should not happen: Ray re-runs lost work
            log.error("%s: incomplete (%d frames of %s)", vid, len(p.frames), p.summary and p.summary.frames)
            if p.summary is not None:
                p.summary.error = {"type": ErrorCode.INTERNAL_ERROR, "message": "not every frame reached the finish"}
                self.submit(vid, p)
        while self.in_flight:
            self.collect(block=True)

    def start(self, vid: str, p: Pending, tries: int = 0) -> None:
        ref = self.finish_task.remote(p.summary, list(p.frames.values()), self.ctx, p.device, p.pack)
        self.inputs[ref] = (vid, p, tries)
        self.in_flight.append(ref)

    def submit(self, vid: str, p: Pending) -> None:
        while len(self.in_flight) >= self.args.max_finishing:
            self.collect(block=True)
        self.start(vid, p)
        del self.pending[vid]

    def collect(self, block: bool) -> None:
        """Take finished videos' results: one, waiting for it (``block``), or every one that is in."""
        import ray

        while self.in_flight:
            done, self.in_flight = ray.wait(self.in_flight, num_returns=1, timeout=None if block else 0)
            if not done:
                return
            vid, p, tries = self.inputs.pop(done[0])
            try:
                out = ray.get(done[0])
            except ray.exceptions.RayError as e:  # beyond Ray's own retries: again, a few times (idempotent)
                if tries >= 3:
                    raise
                log.warning("%s: finish failed (%s), again", vid, type(e).__name__)
                self.finish_retries += 1
                time.sleep(2**tries)
                self.start(vid, p, tries + 1)
                continue
            self.done(out)
            if block:
                return
