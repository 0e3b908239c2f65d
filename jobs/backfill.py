"""Backfill every video under a prefix with Ray Data.

    python -m jobs.backfill --source SRC --dest DEST [--models PACK] [--force] [resource options]

SRC is ``s3://bucket/prefix`` or a local directory (every video file under it); DEST a local directory or
``s3://bucket/prefix``. The pipeline, in waves of ``--wave-size`` videos:

    list videos -> decode sampled frames (CPU tasks, one video each, frames streamed out in small batches)
                -> faces: detection + embedding (actor pool, model loaded once per actor; GPU on GPU workers)
                -> per-video reduce (groupby video: cluster people, pick talent and representative frames)
                -> JPEGs, result.json and Parquet, written by the reduce

Every step calls framepipe's engine (``engine.plan``, ``FaceModel.analyze``, ``VideoAccumulator``,
``engine.finish_video``), so a video's outputs equal what ``framepipe extract`` writes for it.

Outputs, besides each video's folder ``DEST/<video_id>/``:

* ``DEST/manifests/videos/<video_id>.parquet``: one row per input video, succeeded or failed (VIDEO_SCHEMA);
* ``DEST/manifests/people/<video_id>.parquet``: one row per person (PERSON_SCHEMA);
  ``pd.read_parquet("DEST/manifests/videos")`` reads a whole backfill in one call.
* ``DEST/_done/<video_id>.<key>``: written last for a finished video. The key hashes the object's identity
  (ETag, or size and mtime) and the settings that change results, so a re-run skips what is done, redoes a video
  whose object or settings changed, and an interrupted run loses nothing already finished. ``--force`` redoes all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from framepipe import engine, schema, selection, sources
from framepipe.config import Settings
from framepipe.errors import FramepipeError, SourceUnreachable
from framepipe.faces import load_face_model
from framepipe.storage import Destination
from framepipe.video import VideoInfo

log = logging.getLogger("framepipe.backfill")

# Settings that do not change a video's results: not part of the done-marker key.
PERFORMANCE_ONLY = frozenset(
    {"intra_op_threads", "decode_threads", "decode_workers", "prefetch_frames", "device", "http_timeout_s",
     "hourly_price_usd", "price_gpu_usd_per_hour", "price_cpu_usd_per_hour", "backend"}
)
# Failures worth retrying on a re-run (the others are properties of the file and are final).
TRANSIENT = frozenset({SourceUnreachable.code, "destination_error", "model_not_found", "internal_error"})
FRAMES_PER_BLOCK = 8


def settings_key(settings: Settings) -> str:
    data = {k: v for k, v in settings.model_dump().items() if k not in PERFORMANCE_ONLY}
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def done_marker(video_id: str, identity: str, skey: str) -> str:
    return f"{video_id}.{hashlib.sha1(f'{identity}|{skey}'.encode()).hexdigest()[:16]}"


# --------------------------------------------------------------------------------------------------
# stage 1: decode (a CPU task per video; frames leave in small batches, so memory stays flat)
# --------------------------------------------------------------------------------------------------


def decode_video(batch: dict, settings_json: str):
    """One input row (a video) -> batches of frame rows, or one row carrying the error."""
    settings = Settings.model_validate_json(settings_json)
    for i in range(len(batch["source"])):
        source, video_id = str(batch["source"][i]), str(batch["video_id"][i])
        t0 = time.perf_counter()
        try:
            p = engine.plan(source, settings)
        except FramepipeError as e:
            meta = engine.video_meta(source, None).model_dump_json()
            yield _frame_rows(video_id, meta, "", 0, [], error=json.dumps(e.to_dict()), decode_s=0.0)
            continue
        info = json.dumps(asdict(p.stream.info))
        meta = engine.video_meta(source, p).model_dump_json()
        rows, n, error = [], 0, ""
        try:
            for frame in p.stream.read(p.times, keyframes=settings.sampling == "keyframes"):
                rows.append((frame, selection.measure(frame.image), engine.encode_jpeg(frame.image, settings.jpeg_quality)))
                n += 1
                if len(rows) == FRAMES_PER_BLOCK:
                    yield _frame_rows(video_id, meta, info, -1, rows, decode_s=time.perf_counter() - t0)
                    rows, t0 = [], time.perf_counter()
        except FramepipeError as e:
            error = json.dumps(e.to_dict())
        finally:
            p.stream.close()
        extra = json.dumps({"backend": p.stream.backend, "warnings": p.stream.warnings})
        # the last batch says how many frames the video has, so the reduce knows it is complete
        yield _frame_rows(video_id, meta, info, n, rows, error=error, decode_s=time.perf_counter() - t0, extra=extra)


def _frame_rows(video_id, meta, info, total, rows, error="", decode_s=0.0, extra="{}") -> dict:
    """A batch of frame rows; a video with no frame still sends one (empty) row, so that it reaches the reduce."""
    rows = rows or [(None, None, b"")]
    k = len(rows)
    return {
        "video_id": [video_id] * k,
        "meta": [meta] * k,
        "info": [info] * k,
        "extra": [extra] * k,
        "total": [total] * k,
        "error": [error] * k,
        "decode_s": [decode_s / k] * k,
        "pts": [f.pts_s if f else -1.0 for f, _, _ in rows],
        "image": [f.image.tobytes() if f else b"" for f, _, _ in rows],
        "shape": [json.dumps(f.image.shape) if f else "[]" for f, _, _ in rows],
        "stats": [json.dumps(list(st)) if st else "[]" for _, st, _ in rows],
        "jpeg": [jpeg for _, _, jpeg in rows],
    }


# --------------------------------------------------------------------------------------------------
# stage 2: faces (actor pool)
# --------------------------------------------------------------------------------------------------


class FaceEmbedder:
    """Holds the face model (once per actor) and turns frame rows into face rows; raw images stop here."""

    def __init__(self, settings_json: str):
        self.model = load_face_model(Settings.model_validate_json(settings_json))

    def __call__(self, batch: dict) -> dict:
        faces, infer_s = [], []
        for image, shape in zip(batch["image"], batch["shape"]):
            t0 = time.perf_counter()
            if len(image):
                array = np.frombuffer(image, np.uint8).reshape(json.loads(shape))
                faces.append(pickle.dumps(self.model.analyze(array)))
            else:
                faces.append(pickle.dumps([]))
            infer_s.append(time.perf_counter() - t0)
        out = {k: v for k, v in batch.items() if k != "image"}
        out.update(
            faces=faces,
            infer_s=infer_s,
            device=[self.model.device] * len(faces),
            model=[self.model.pack] * len(faces),
        )
        return out


# --------------------------------------------------------------------------------------------------
# stage 3: per-video reduce
# --------------------------------------------------------------------------------------------------


def reduce_video(group: dict, settings_json: str, dest: str, markers: dict) -> dict:
    """All rows of one video -> its outputs, manifest rows and done marker; returns one summary row."""
    t0 = time.perf_counter()
    settings = Settings.model_validate_json(settings_json)
    destination = Destination(dest, timeout_s=settings.http_timeout_s)
    video_id = str(group["video_id"][0])
    meta = schema.VideoMeta.model_validate_json(str(group["meta"][0]))
    device = str(group["device"][0])
    model = str(group["model"][0])
    extra = next((json.loads(e) for e in group["extra"] if e != "{}"), {})
    spent = float(np.sum(group["decode_s"]) + np.sum(group["infer_s"]))
    errors = [json.loads(e) for e in group["error"] if e]
    frames = sorted(
        (float(group["pts"][i]), i) for i in range(len(group["pts"])) if len(group["jpeg"][i])
    )
    expected = max(int(t) for t in group["total"])

    def processing(n_frames: int = 0, n_faces: int = 0) -> schema.Processing:
        elapsed = spent + time.perf_counter() - t0
        return engine.processing_doc(settings, elapsed, device, extra.get("backend"), model, n_frames, n_faces)

    try:
        if errors and not frames:
            raise FramepipeError.with_code(errors[0]["type"], errors[0]["message"])
        if len(frames) < expected:  # should not happen: Ray retries lost work
            raise FramepipeError(f"only {len(frames)} of {expected} frames reached the reduce")
        acc = engine.VideoAccumulator(VideoInfo(**json.loads(str(group["info"][0]))), settings)
        acc.warnings += extra.get("warnings", [])
        for pts, i in frames:
            stats = tuple(json.loads(str(group["stats"][i])))
            acc.add_encoded(pts, pickle.loads(group["faces"][i]), stats, bytes(group["jpeg"][i]))
        result = engine.finish_video(
            destination, video_id, meta, acc, lambda: processing(acc.frames_sampled, len(acc.records)), model
        )
    except FramepipeError as e:
        result = engine.record_failure(destination, video_id, meta, e, processing(), model, settings)
    except Exception as e:  # a bug must cost one video, not the backfill
        log.exception("reduce of %s failed", video_id)
        err = FramepipeError.with_code("internal_error", f"{type(e).__name__}: {e}")
        result = engine.record_failure(destination, video_id, meta, err, processing(), model, settings)
    if result.status == "succeeded" or (result.error and result.error.type not in TRANSIENT):
        destination.write(f"_done/{markers[video_id]}", b"")
    return {
        "video_id": [video_id],
        "source": [meta.source],
        "status": [result.status],
        "people": [len(result.talent_frames)],
        "error": [f"{result.error.type}: {result.error.message}" if result.error else ""],
    }


# --------------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------------


@dataclass
class Resources:
    actors: int
    actor_cpus: float
    actor_gpus: float
    decode_cpus: float
    batch_size: int
    actor_threads: int


def plan_resources(args, cluster: dict) -> Resources:
    """Explicit resources. Defaults: one actor per GPU where the cluster has GPUs; on CPUs only, actors take at
    most half the CPUs so decode and reduce tasks always have room (an actor pool holding every CPU deadlocks)."""
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    if args.actor_gpus is None:
        args.actor_gpus = 1.0 if gpus >= 1 else 0.0
    if args.actor_cpus is None:
        args.actor_cpus = 1.0
    if args.actors is None:
        args.actors = int(gpus // args.actor_gpus) if args.actor_gpus else max(1, int(cpus // 2 // args.actor_cpus))
    if args.actor_gpus == 0 and args.actors * args.actor_cpus >= cpus:
        raise SystemExit(
            f"--actors {args.actors} x --actor-cpus {args.actor_cpus} would hold all {cpus:g} CPUs and leave none "
            "for decoding: lower one of them"
        )
    return Resources(args.actors, args.actor_cpus, args.actor_gpus, args.decode_cpus, args.batch_size,
                     args.actor_threads)


def build_dataset(items: list[dict], settings: Settings, dest: str, res: Resources, markers: dict):
    import ray
    from ray.data import ActorPoolStrategy

    settings_json = settings.model_dump_json()
    actor_settings = settings.with_overrides(
        intra_op_threads=res.actor_threads, device="cuda" if res.actor_gpus else settings.device
    ).model_dump_json()
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # SPREAD puts decode tasks across the CPU nodes. With the actors' explicit DEFAULT it also keeps Ray Data from
    # fusing decoding into the actors (it fuses stages whose remote args match), so decoding and inference overlap.
    ds = ds.map_batches(
        decode_video,
        batch_size=1,
        num_cpus=res.decode_cpus,
        scheduling_strategy="SPREAD",
        fn_kwargs={"settings_json": settings_json},
    )
    ds = ds.map_batches(
        FaceEmbedder,
        batch_size=res.batch_size,
        compute=ActorPoolStrategy(min_size=1, max_size=res.actors),
        num_cpus=res.actor_cpus,
        num_gpus=res.actor_gpus,
        scheduling_strategy="DEFAULT",  # differs from decoding's SPREAD: the two stages must not be fused
        fn_constructor_kwargs={"settings_json": actor_settings},
    )
    return ds.groupby("video_id").map_groups(
        reduce_video, num_cpus=1, fn_kwargs={"settings_json": settings_json, "dest": dest, "markers": markers}
    )


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m jobs.backfill", description="Backfill every video under a prefix.")
    ap.add_argument("--source", required=True, help="s3://bucket/prefix or a local directory")
    ap.add_argument("--dest", required=True, help="s3://bucket/prefix or a local directory")
    ap.add_argument("--models", help="model pack name or folder (env FRAMEPIPE_MODELS)")
    ap.add_argument("--force", action="store_true", help="redo videos that are already done")
    ap.add_argument("--limit", type=int, help="process at most this many videos")
    ap.add_argument("--images", action="store_true", help="also process photos (.jpg, .png, ...) as one-frame inputs")
    ap.add_argument("--wave-size", type=int, default=64, help="videos per Ray Data run (bounds the shuffle)")
    ap.add_argument("--actors", type=int, help="max face-model actors (default: one per GPU, else CPUs/2)")
    ap.add_argument("--actor-cpus", type=float, help="CPUs per actor (default 1)")
    ap.add_argument("--actor-gpus", type=float, help="GPUs per actor (default 1 on GPU clusters, else 0)")
    ap.add_argument("--actor-threads", type=int, default=0,
                    help="onnxruntime threads per actor (default 0: the node's cores; the reservation is --actor-cpus, "
                    "and idle threads do not spin)")
    ap.add_argument("--decode-cpus", type=float, default=1.0, help="CPUs per decode task")
    ap.add_argument("--batch-size", type=int, default=8, help="frames per actor call")
    ap.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or "local",
                    help="Ray cluster (default: RAY_ADDRESS, as set by `ray job submit`, else a local Ray)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    import ray
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    started = time.perf_counter()
    settings = Settings().with_overrides(models=args.models)
    dest = Destination(args.dest, timeout_s=settings.http_timeout_s)
    videos = sources.list_videos(args.source, timeout_s=settings.http_timeout_s, images=args.images)
    skey = settings_key(settings)
    done = set() if args.force else set(dest.list("_done"))
    markers = {engine.video_id_for(v): done_marker(engine.video_id_for(v), v.identity, skey) for v in videos}
    todo = [v for v in videos if markers[engine.video_id_for(v)] not in done]
    if args.limit is not None:
        todo = todo[: args.limit]
    log.info("%d videos under %s: %d done already, %d to process", len(videos), args.source,
             len(videos) - len(todo), len(todo))
    summary = {"videos": len(videos), "skipped": len(videos) - len(todo), "succeeded": 0, "failed": 0, "people": 0}
    failures = []
    if todo:
        ray.init(address=args.ray_address, ignore_reinit_error=True, log_to_driver=False,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                           if k.startswith(("FRAMEPIPE_", "AWS_"))}})
        # the classic task-based sort shuffle: no aggregator actors competing with the face actors for CPUs
        DataContext.get_current().shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        res = plan_resources(args, ray.cluster_resources())
        log.info("resources: %s", res)
        for start in range(0, len(todo), args.wave_size):
            wave = todo[start : start + args.wave_size]
            items = [{"source": v.source, "video_id": engine.video_id_for(v)} for v in wave]
            for row in build_dataset(items, settings, args.dest, res, markers).iter_rows():
                ok = row["status"] == "succeeded"
                summary["succeeded" if ok else "failed"] += 1
                summary["people"] += int(row["people"])
                if not ok:
                    failures.append(f"{row['source']}: {row['error']}")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    for line in failures:
        log.warning("failed: %s", line)
    print("backfill summary: " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
