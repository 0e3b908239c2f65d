"""Backfill every video under a prefix with Ray Data, streaming.

    python -m jobs.backfill --source SRC --dest DEST [--models PACK] [--force] [--limit N] [resource options]

SRC is ``s3://bucket/prefix`` or a local directory (every video file under it); DEST a local directory or
``s3://bucket/prefix``. The same per-video pipeline as ``framepipe extract`` (``framepipe/pipeline.py``), in one of
two layouts (``--layout``, see :func:`plan_resources`). **fused** (the default when the models run on CPUs): an
actor pool whose every call runs ``pipeline.process_video`` on one video, outputs and done marker included.
**split** (the default with GPUs, or with stages pinned to nodes): its parts spread over the cluster:

    listing     one task lists SRC a page at a time (nothing is listed up front by the driver)
    decode      a CPU task per video: done-marker check, FrameSource (sampling, parallel parts, measures),
                the representative-frame picks; frames leave as a uint8 tensor column, the video's metadata
                once, in its last row
    faces       map_batches over an actor pool (ActorPoolStrategy): the models once per actor, GPU on GPU
                nodes; a frame's JPEG is encoded only when it holds a face
    finish      a Ray task per video, started by the driver as soon as the video's last frame is analysed:
                people (clustering), outputs, manifest rows, done marker

No wave barrier and no shuffle: a short video's outputs are written while a long one is still decoding. Ray Data
has no streaming per-key reduce (``groupby`` is an all-to-all that waits for every input), so the driver gathers
each video's small face rows from the stream and hands a complete video to a Ray Core task.

Outputs, besides each video's folder ``DEST/<video_id>/``: ``DEST/manifests/videos/<video_id>.parquet`` (one row
per input, succeeded or failed), ``DEST/manifests/people/<video_id>.parquet`` (one row per person), and
``DEST/_done/<video_id>.<key>``, written last. The key hashes the object's identity (ETag, or size and mtime), the
settings that change results and the framepipe and schema versions, so a re-run skips what is done, redoes what
changed, and a run killed half-way loses nothing finished. ``--force`` redoes all.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from framepipe import ids, outputs, pipeline, schema, selection, sources, state
from framepipe.config import Settings
from framepipe.errors import ErrorCode, FramepipeError
from framepipe.storage import Destination

log = logging.getLogger("framepipe.backfill")

FRAMES_PER_BATCH = 8  # frames per yield of a decode task
LIST_PAGE = 1000  # inputs per listing page
# Environment variables handed to the workers: settings only. Credentials never travel in the runtime env (it is
# readable in the job table, the dashboard and Ray's logs): nodes use their instance role, profile or own env.
PASSED_ENV = re.compile(r"^(FRAMEPIPE_(?!SERVE_)\w+|AWS_ENDPOINT_URL\w*|AWS_REGION|AWS_DEFAULT_REGION)$")


# --------------------------------------------------------------------------------------------------
# listing: a page at a time, inside the dataset
# --------------------------------------------------------------------------------------------------


def list_inputs(batch: dict, root: str, images: bool, timeout_s: float) -> Iterator[dict]:
    page: list[sources.Source] = []
    for src in sources.iter_videos(root, timeout_s=timeout_s, images=images):
        page.append(src)
        if len(page) == LIST_PAGE:
            yield _page(page)
            page = []
    if page:
        yield _page(page)


def _page(srcs: list[sources.Source]) -> dict:
    return {"source": [s.source for s in srcs], "identity": [s.identity for s in srcs]}


# --------------------------------------------------------------------------------------------------
# decode: a task per video
# --------------------------------------------------------------------------------------------------


@dataclass
class VideoSummary:
    """What a decode task knows of its video, sent once (in the video's last row)."""

    video_id: str
    source: str
    marker: str
    started: float  # wall clock (time.time) when the decode task took the video
    skipped: bool = False
    meta: schema.VideoMeta | None = None
    backend: str | None = None
    frames: int = 0  # frame rows sent before this one
    representatives: selection.Representatives | None = None
    warnings: list[str] = field(default_factory=list)
    error: dict | None = None  # {"type", "message"}
    node: str = ""


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def decode_video(batch: dict, settings_json: str, dest: str, force: bool) -> Iterator[dict]:
    settings = Settings.model_validate_json(settings_json)
    destination = Destination(dest, timeout_s=settings.http_timeout_s)
    for source, identity in zip(batch["source"], batch["identity"]):
        yield from _decode_one(str(source), str(identity), settings, destination, force)


def _decode_one(source: str, identity: str, settings: Settings, destination: Destination, force: bool):
    from framepipe.framesource import open_source

    vid = ids.video_id(source)
    summary = VideoSummary(vid, source, ids.done_marker(vid, identity, settings), time.time(), node=_node_id())
    fs = None
    try:
        if not force and pipeline.is_done(destination, summary.marker):
            summary.skipped = True
        else:
            fs = open_source(source, settings)
            summary.meta, summary.backend = outputs.video_meta(source, fs), fs.backend
            picks = state.FramePicks(fs.info, settings)
            quality = settings.jpeg_quality
            rows: list = []
            with fs.frames() as frames:
                for f in frames:
                    picks.add(f.pts_s, f.measure, lambda img=f.image: outputs.encode_jpeg(img, quality))
                    rows.append(f)
                    if len(rows) == FRAMES_PER_BATCH:
                        yield _frame_rows(vid, rows)
                        summary.frames += len(rows)
                        rows = []
            if rows:
                yield _frame_rows(vid, rows)
                summary.frames += len(rows)
            summary.representatives = picks.pick() if picks.frames_sampled else None
            summary.warnings = list(fs.warnings)
    except Exception as e:  # one bad input is one failed row, never a failed dataset
        summary.error = pipeline.typed_error(e, f"decoding {source}", source, settings.http_timeout_s).to_dict()
    finally:
        if fs is not None:
            fs.close()
    yield {
        "video_id": [vid],
        "pts": np.array([math.nan]),
        "image": np.zeros((1, 1, 1, 3), np.uint8),
        "last": np.array([True]),
        "summary": [pickle.dumps(summary)],
    }


def _frame_rows(vid: str, frames: list) -> dict:
    return {
        "video_id": [vid] * len(frames),
        "pts": np.array([f.pts_s for f in frames]),
        "image": np.stack([f.image for f in frames]),  # one video: one shape; a tensor column
        # typed columns: an all-None column would come back as float NaNs from a block that holds no summary
        "last": np.zeros(len(frames), dtype=bool),
        "summary": [b""] * len(frames),
    }


# --------------------------------------------------------------------------------------------------
# faces: an actor pool
# --------------------------------------------------------------------------------------------------


class FaceActor:
    """The models, once per actor (framepipe's LocalAnalyzer). Pixels stop here: out go the faces, and the JPEG of
    frames that hold one."""

    def __init__(self, settings_json: str):
        from framepipe.analyzer import LocalAnalyzer

        self.settings = Settings.model_validate_json(settings_json)
        self.analyzer = LocalAnalyzer.load(self.settings)
        self.tag = f"{self.analyzer.device}|{self.analyzer.pack}|{_node_id()}"

    def __call__(self, batch: dict) -> dict:
        n = len(batch["video_id"])
        faces, jpegs, errors = [b""] * n, [b""] * n, [""] * n
        todo = [i for i in range(n) if not batch["last"][i]]
        size = self.analyzer.batch_size
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            try:
                found = self.analyzer.analyze([batch["image"][i] for i in chunk])
            except Exception as e:  # costs the video (a transient failure, retried by the next run), not the job
                log.exception("face models failed")
                for i in chunk:
                    errors[i] = f"{type(e).__name__}: {str(e)[:200]}"
                continue
            for i, found_faces in zip(chunk, found):
                faces[i] = pickle.dumps(found_faces)
                if found_faces:
                    jpegs[i] = outputs.encode_jpeg(batch["image"][i], self.settings.jpeg_quality)
        return {
            "video_id": batch["video_id"],
            "pts": batch["pts"],
            "faces": faces,
            "jpeg": jpegs,
            "error": errors,
            "last": batch["last"],
            "summary": batch["summary"],
            "analyzer": [self.tag] * n,
        }


class VideoActor:
    """The fused layout (models on CPUs): a whole video per call, through ``pipeline.process_video`` as in ``framepipe
    extract`` (decoding in the actor's reader threads, the models in its own thread, outputs and done marker written
    here). Out goes one small row per video; frames never leave the process that decodes them."""

    def __init__(self, settings_json: str, dest: str, force: bool, run: str):
        from framepipe.analyzer import LocalAnalyzer

        self.settings = Settings.model_validate_json(settings_json)
        self.destination = Destination(dest, timeout_s=self.settings.http_timeout_s)
        self.force = force
        self.run = run  # this run's id, written into the done markers it makes
        self.analyzer = LocalAnalyzer.load(self.settings)
        self.node = _node_id()

    def __call__(self, batch: dict) -> dict:
        rows = [self._one(str(s), str(i)) for s, i in zip(batch["source"], batch["identity"])]
        return {k: [r[k] for r in rows] for k in FUSED_COLUMNS}

    def _one(self, source: str, identity: str) -> dict:
        row = {"video_id": ids.video_id(source), "source": source, "status": "skipped", "people": 0, "error": "",
               "started": time.time(), "node": self.node}
        try:
            result = pipeline.process_unless_done(source, identity, self.destination, self.settings, self.analyzer,
                                                  self.force, self.run)
            if result is not None:
                row.update(status=result.status, people=len(result.talent_frames),
                           error=str(result.error) if result.error else "")
        except Exception as e:  # the destination failed under the failure record too: this video, not the dataset
            error = pipeline.typed_error(e, f"processing {source}")
            row.update(status="failed", error=error.line)
        return {**row, "finished": time.time()}


FUSED_COLUMNS = ("video_id", "source", "status", "people", "error", "started", "finished", "node")


# --------------------------------------------------------------------------------------------------
# finish: a Ray task per complete video
# --------------------------------------------------------------------------------------------------


def finish_video(summary: VideoSummary, frames: list, settings_json: str, dest: str, analyzer: str) -> dict:
    """People, outputs and done marker of one video whose frames have all been analysed (``frames``: (pts, pickled
    faces, JPEG, error) per frame)."""
    settings = Settings.model_validate_json(settings_json)
    destination = Destination(dest, timeout_s=settings.http_timeout_s)
    device, pack = (analyzer.split("|") + ["cpu", ""])[:2] if analyzer else ("cpu", None)
    people = state.PeopleState()

    def build() -> schema.Result:
        if summary.error:
            raise FramepipeError.with_code(summary.error["type"], summary.error["message"])
        failed = next((e for _, _, _, e in frames if e), None)
        if failed:
            raise FramepipeError.with_code(ErrorCode.INTERNAL_ERROR, f"face models failed: {failed}")
        for pts, faces, jpeg, _ in sorted(frames, key=lambda f: f[0]):
            people.add(pts, pickle.loads(faces), jpeg)
        reduction = state.reduce(people, summary.representatives, summary.frames, settings)

        def processing() -> schema.Processing:
            return outputs.processing_doc(settings, time.time() - summary.started, device, summary.backend, pack,
                                          summary.frames, len(people.records))

        return outputs.write_success(destination, summary.video_id, summary.meta, reduction, summary.warnings,
                                     settings, processing, pack)

    def processing_failed() -> schema.Processing:
        return outputs.processing_doc(settings, time.time() - summary.started, device, summary.backend, pack, 0, 0)

    meta = summary.meta or schema.VideoMeta(source=summary.source)
    result = pipeline.run_or_record(summary.source, build, destination, summary.video_id, lambda: meta,
                                    processing_failed, pack, settings)
    if pipeline.is_final(result):
        pipeline.mark_done(destination, summary.marker)
    return {
        "video_id": summary.video_id,
        "source": summary.source,
        "status": result.status,
        "people": len(result.talent_frames),
        "error": str(result.error) if result.error else "",
        "started": summary.started,
        "finished": time.time(),
    }


@dataclass
class Pending:
    """One video's rows gathered by the driver until it is complete."""

    frames: dict = field(default_factory=dict)  # pts -> (pts, faces, jpeg, error); a retried task's rows count once
    summary: VideoSummary | None = None
    analyzer: str = ""

    @property
    def complete(self) -> bool:
        return self.summary is not None and len(self.frames) >= self.summary.frames


# --------------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------------


@dataclass
class Resources:
    layout: str  # "split" (decode tasks -> model actors -> finish tasks) or "fused" (a whole video per actor call)
    actors: int
    actor_cpus: float
    actor_gpus: float
    actor_resources: dict
    decode_cpus: float
    decode_resources: dict
    batch_size: int
    actor_threads: int


def plan_resources(args, cluster: dict) -> Resources:
    """The layout and explicit resources of the run.

    * **split** (GPU clusters, or stages pinned with ``--actor-resources`` / ``--decode-resources``): CPU decode
      tasks feed the model actors through the object store, and finish tasks write each video. One actor per GPU
      (1 GPU + 1 CPU, onnxruntime on CUDA). An actor pool holding every CPU deadlocks silently (no decode task could
      run), so on CPUs the actors together take at most half of them.
    * **fused** (the models on CPUs, nothing pinned): each actor runs ``pipeline.process_video`` on a whole video,
      as ``framepipe extract`` does. Decoding and inference share the same cores either way; moving decoded frames
      between processes would only add copies, Arrow conversion and worker processes (on 2 cores the split layout ran
      at 0.60x ``framepipe extract`` on 48 videos, the fused one at 0.90x: docs/backfill.md). One actor per CPU, one onnxruntime thread
      each, spread over the nodes. Each reserves half a CPU, though it keeps one busy: the listing runs in a Ray Data
      task of one CPU (its streaming repartition cannot be given less), which a pool holding every CPU would starve."""
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    on_gpu = (args.actor_gpus if args.actor_gpus is not None else (1.0 if gpus >= 1 else 0.0)) > 0
    layout = args.layout
    if layout == "auto":
        layout = "split" if on_gpu or args.actor_resources or args.decode_resources else "fused"
    actor_gpus = args.actor_gpus if args.actor_gpus is not None else (1.0 if on_gpu else 0.0)
    actor_cpus = args.actor_cpus if args.actor_cpus is not None else (1.0 if on_gpu else 0.5)
    threads = args.actor_threads if args.actor_threads is not None else (0 if on_gpu else 1)
    actors = args.actors
    if actors is None:
        if on_gpu:
            actors = int(gpus // actor_gpus)
        elif layout == "fused":
            actors = max(1, int(cpus))
        else:
            actors = max(1, int(cpus / 2 // actor_cpus))
    if not on_gpu and not args.actor_resources and actors * actor_cpus > cpus - 1:
        raise SystemExit(
            f"--actors {actors} x --actor-cpus {actor_cpus} would leave less than the one CPU that listing and "
            f"{'decoding need' if layout == 'split' else 'listing needs'} of {cpus:g}: lower one of them"
        )
    return Resources(layout, actors, actor_cpus, actor_gpus, json.loads(args.actor_resources or "{}"),
                     args.decode_cpus, json.loads(args.decode_resources or "{}"), args.batch_size, threads)


def build_dataset(args, settings: Settings, res: Resources, run_id: str = ""):
    import ray
    from ray.data import ActorPoolStrategy

    settings_json = settings.model_dump_json()
    actor_settings = settings.with_overrides(
        intra_op_threads=res.actor_threads, device="cuda" if res.actor_gpus else settings.device
    ).model_dump_json()
    ds = ray.data.from_items([{"root": args.source}]).map_batches(
        list_inputs, batch_size=1,  # one CPU, fused with the repartition below into one task
        fn_kwargs={"root": args.source, "images": args.images, "timeout_s": settings.http_timeout_s},
    )
    # a block per input, streamed (no all-to-all): each video gets its own decode task, or actor call when fused
    ds = ds.repartition(target_num_rows_per_block=1)
    if args.limit is not None:
        ds = ds.limit(args.limit)
    if res.layout == "fused":
        return ds.map_batches(
            VideoActor,
            batch_size=1,
            # a whole video per call: nothing queued behind one (maybe an hour long) while another actor is free
            compute=ActorPoolStrategy(size=res.actors, max_tasks_in_flight_per_actor=1),
            num_cpus=res.actor_cpus,
            scheduling_strategy="SPREAD",
            fn_constructor_kwargs={"settings_json": actor_settings, "dest": args.dest, "force": args.force,
                                   "run": run_id},
        )
    ds = ds.map_batches(
        decode_video,
        batch_size=1,
        num_cpus=res.decode_cpus,
        resources=res.decode_resources or None,
        # SPREAD puts decode tasks across the CPU nodes. With the actors' DEFAULT it also keeps Ray Data from fusing
        # decoding into the actors (it fuses stages whose remote args match), so decoding and inference overlap.
        scheduling_strategy="SPREAD",
        fn_kwargs={"settings_json": settings_json, "dest": args.dest, "force": args.force},
    )
    return ds.map_batches(
        FaceActor,
        batch_size=res.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=res.actors),  # all started at once: no ramp-up while frames queue
        num_cpus=res.actor_cpus,
        num_gpus=res.actor_gpus,
        resources=res.actor_resources or None,
        scheduling_strategy="DEFAULT",
        fn_constructor_kwargs={"settings_json": actor_settings},
    )


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m jobs.backfill", description="Backfill every video under a prefix.")
    ap.add_argument("--source", required=True, help="s3://bucket/prefix or a local directory")
    ap.add_argument("--dest", required=True, help="s3://bucket/prefix or a local directory")
    ap.add_argument("--models", help="model pack name or folder (env FRAMEPIPE_MODELS)")
    ap.add_argument("--force", action="store_true", help="redo videos that are already done")
    ap.add_argument("--no-people", action="store_true",
                    help="do not update the person registry (framepipe people DEST) at the end of the run")
    ap.add_argument("--limit", type=int, help="take at most this many inputs from the listing (done ones included)")
    ap.add_argument("--images", action="store_true", help="also process photos (.jpg, .png, ...) as one-frame inputs")
    ap.add_argument("--layout", choices=["auto", "split", "fused"], default="auto",
                    help="split: decode tasks -> model actors -> finish tasks; fused: a whole video per model actor "
                    "call (auto: split with GPUs or pinned stages, fused when the models run on CPUs)")
    ap.add_argument("--actors", type=int,
                    help="face-model actors (default: one per GPU; on CPUs one per CPU fused, CPUs/2 split)")
    ap.add_argument("--actor-cpus", type=float,
                    help="CPUs per actor (default 1; 0.5 in the split layout on CPUs)")
    ap.add_argument("--actor-gpus", type=float, help="GPUs per actor (default 1 on GPU clusters, else 0)")
    ap.add_argument("--actor-resources", help='custom resources per actor, JSON (e.g. \'{"t4": 1}\')')
    ap.add_argument("--actor-threads", type=int,
                    help="onnxruntime threads per actor (0: the node's cores; default 0 on GPU clusters, 1 on CPUs)")
    ap.add_argument("--decode-cpus", type=float, default=0.5, help="CPUs per decode task (default 0.5)")
    ap.add_argument("--decode-resources", help="custom resources per decode task, JSON")
    ap.add_argument("--finish-cpus", type=float, default=0.0,
                    help="CPUs reserved per finish task (default 0: the work is short and mostly I/O, and must never "
                    "wait behind the dataset's own tasks)")
    ap.add_argument("--batch-size", type=int, default=8, help="frames per actor call")
    ap.add_argument("--max-finishing", type=int, default=2,
                    help="finish tasks in flight at once (default 2: bounds memory, and a task that reserves no CPU "
                    "gets a worker process of its own per concurrent call, each start costing more than a finish)")
    ap.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or "local",
                    help="Ray cluster (default: RAY_ADDRESS, as set by `ray job submit`, else a local Ray)")
    return ap.parse_args(argv)


def _spilled_bytes() -> int:
    from ray._private.internal_api import memory_summary

    try:
        text = memory_summary(stats_only=True)
    except Exception:  # noqa: BLE001 - a statistic, never worth failing the job for
        return -1
    m = re.search(r"Spilled (\d+) MiB", text)
    return int(m.group(1)) * 2**20 if m else 0


def run(args) -> dict:
    import ray

    settings = Settings().with_overrides(models=args.models)
    started, wall0 = time.perf_counter(), time.time()
    env = {k: v for k, v in os.environ.items() if PASSED_ENV.match(k)}
    local = args.ray_address == "local"
    if local:  # a local Ray started here must not outlive a driver killed outright
        from jobs import reaper

        reaper.start(os.getpid())
    # A local Ray started here inherits this process's environment: no runtime env, so that its workers are plain
    # ones (the raylet's prestarted workers serve the first tasks and actors instead of new ones being started)
    ray.init(address=args.ray_address, ignore_reinit_error=True, log_to_driver=False,
             **({"include_dashboard": False} if local else {"runtime_env": {"env_vars": env}}))
    res = plan_resources(args, ray.cluster_resources())
    log.info("resources: %s", res)
    # a finish task lost with its node is retried by Ray elsewhere (its arguments live with the driver)
    finish = ray.remote(finish_video).options(num_cpus=args.finish_cpus, max_retries=5)
    settings_json = settings.model_dump_json()
    summary = pipeline.RunSummary()
    pending: dict[str, Pending] = {}
    in_flight: list = []
    inputs: dict = {}  # finish task -> (video id, its rows, tries), until its result is in
    placement = {"decode": set(), "analyzer": set()}
    total_store = ray.cluster_resources().get("object_store_memory", 0)
    peak_store, sampled = 0.0, 0.0
    first_output_s = None

    def collect(block: bool) -> None:
        nonlocal in_flight, first_output_s
        while in_flight:
            done, in_flight = ray.wait(in_flight, num_returns=1, timeout=None if block else 0)
            if not done:
                return
            vid, p, tries = inputs.pop(done[0])
            try:
                out = ray.get(done[0])
            except ray.exceptions.RayError as e:  # beyond Ray's own retries: again, a few times (idempotent)
                if tries >= 3:
                    raise
                log.warning("%s: finish failed (%s), again", vid, type(e).__name__)
                time.sleep(2**tries)
                start(vid, p, tries + 1)
                continue
            if first_output_s is None:
                first_output_s = out["finished"]
            summary.add(out["source"], out["status"], out["people"], out["error"])
            log.info("%s: %s (started at +%.1f s, done at +%.1f s)", out["video_id"], out["error"] or out["status"],
                     out["started"] - wall0, out["finished"] - wall0)
            if block:  # one result was waited for; without blocking, take every one that is in
                return

    def start(vid: str, p: Pending, tries: int = 0) -> None:
        ref = finish.remote(p.summary, list(p.frames.values()), settings_json, args.dest, p.analyzer)
        inputs[ref] = (vid, p, tries)
        in_flight.append(ref)

    def submit(vid: str, p: Pending) -> None:
        while len(in_flight) >= args.max_finishing:
            collect(block=True)
        start(vid, p)
        del pending[vid]

    def sample_store() -> None:
        nonlocal peak_store, sampled
        if total_store and time.perf_counter() - sampled > 1.0:
            sampled = time.perf_counter()
            peak_store = max(peak_store, total_store - ray.available_resources().get("object_store_memory", 0))

    def fused_row(row: dict) -> None:
        nonlocal first_output_s
        summary.listed += 1
        placement["decode"].add(row["node"])
        placement["analyzer"].add(row["node"])
        if row["status"] == "skipped":
            summary.skipped += 1
            return
        summary.add(row["source"], row["status"], int(row["people"]), row["error"])
        first_output_s = min(first_output_s or row["finished"], row["finished"])
        log.info("%s: %s (started at +%.1f s, done at +%.1f s)", row["video_id"], row["error"] or row["status"],
                 row["started"] - wall0, row["finished"] - wall0)

    def drive_fused(batches) -> None:  # each row is a finished video
        seen: set[str] = set()
        for batch in batches:
            for i, vid in enumerate(batch["video_id"]):
                if str(vid) not in seen:  # a video's row once, whatever Ray re-ran
                    seen.add(str(vid))
                    fused_row({k: batch[k][i].item() if hasattr(batch[k][i], "item") else batch[k][i]
                               for k in FUSED_COLUMNS})
            sample_store()

    def drive_split(batches) -> None:  # rows are analysed frames, and each video's summary
        for batch in batches:
            for i, vid in enumerate(batch["video_id"]):
                p = pending.setdefault(str(vid), Pending())
                if batch["last"][i]:
                    s: VideoSummary = pickle.loads(batch["summary"][i])
                    if p.summary is not None:
                        continue  # a retried decode task's second summary
                    p.summary = s
                    summary.listed += 1
                    placement["decode"].add(s.node)
                    if s.skipped:
                        summary.skipped += 1
                        del pending[str(vid)]
                        continue
                else:
                    pts = float(batch["pts"][i])
                    p.frames[pts] = (pts, batch["faces"][i], batch["jpeg"][i], str(batch["error"][i]))
                    p.analyzer = str(batch["analyzer"][i])
                    placement["analyzer"].add(p.analyzer.rsplit("|", 1)[-1])
                if p.complete:
                    log.debug("%s: all frames analysed at +%.1f s", vid, time.time() - wall0)
                    submit(str(vid), p)
            collect(block=False)
            sample_store()

    ds = build_dataset(args, settings, res, uuid.uuid4().hex)
    drive = drive_fused if res.layout == "fused" else drive_split
    drive(ds.iter_batches(batch_size=None, batch_format="numpy"))
    if os.environ.get("FRAMEPIPE_BACKFILL_STATS"):
        log.info("Ray Data stats:\n%s", ds.stats())
    for vid, p in list(pending.items()):  # should not happen: Ray re-runs lost work
        log.error("%s: incomplete (%d frames of %s)", vid, len(p.frames), p.summary and p.summary.frames)
        if p.summary is not None:
            p.summary.error = {"type": ErrorCode.INTERNAL_ERROR, "message": "not every frame reached the finish"}
            submit(vid, p)
    while in_flight:
        collect(block=True)
    out = summary.as_dict()
    if not args.no_people:  # the person registry, incrementally: ids, names and merges of earlier runs kept
        from framepipe import registry  # the driver alone needs it (pandas, scipy): workers import this module too

        try:
            _, updates, _ = registry.update_destination(args.dest, settings.people_max_distance,
                                                     settings.people_max_count, models=settings.models)
            out["people_registry"] = {m: vars(u) for m, u in updates.items()}
        except Exception as e:  # the videos are done and marked; `framepipe people DEST` can redo this step
            log.exception("updating the person registry failed")
            out["people_registry"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    out.update(
        seconds=round(time.perf_counter() - started, 1),
        first_output_s=round(first_output_s - wall0, 1) if first_output_s else None,
        peak_object_store_bytes=int(peak_store),
        spilled_bytes=_spilled_bytes(),
        decode_nodes=sorted(placement["decode"]),
        analyzer_nodes=sorted(placement["analyzer"]),
    )
    for line in summary.failures:
        log.warning("failed: %s", line)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = run(args)
    if args.limit is not None:
        log.info("--limit %d: took the first %d listed inputs; the rest of %s was not looked at", args.limit,
                 out["listed"], args.source)
    if out["skipped"]:
        log.info("%d inputs done already (same object, settings and framepipe version): skipped; --force redoes them",
                 out["skipped"])
    print("backfill summary: " + json.dumps(out), flush=True)
    import ray

    ray.shutdown()  # now, not in Ray's exit hook (which first sleeps for late log lines that log_to_driver=False drops)
    return 0


if __name__ == "__main__":
    # run through the module's real name, so the functions and classes Ray ships refer to jobs.backfill, not __main__
    from jobs.backfill import main as module_main

    sys.exit(module_main())
