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

Outputs, besides each video's folder ``DEST/<video_id>/``: its rows in the manifests' two Delta tables
``DEST/manifests/videos`` (one row per input, succeeded or failed) and ``DEST/manifests/people`` (one row per
person), one atomic commit per video, and ``DEST/_done/<video_id>.<key>``, written last. The key hashes the object's identity (ETag, or size and mtime), the
settings that change results and the framepipe and schema versions, so a re-run skips what is done, redoes what
changed, and a run killed half-way loses nothing finished. ``--force`` redoes all.

Modules: ``jobs/plan.py`` (the layout, what each stage asks of the cluster, the dataset), ``jobs/listing.py`` (the
listing task), ``jobs/stages.py`` (what else runs on the workers), ``jobs/driver.py`` (the driver's loop over the
rows), this one (the arguments, the run).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import re
import sys
import time
import uuid

from pydantic import ValidationError

from framepipe import sources
from framepipe.config import Settings
from framepipe.errors import FramepipeError

from jobs import faults, ray_noise
from jobs.driver import FusedDriver, SplitDriver
from jobs.plan import build_dataset, plan_resources
from jobs.stages import StageContext

log = logging.getLogger("framepipe.backfill")

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the driver of a submitted job
PASSED_ENV = re.compile(r"^(FRAMEPIPE_(?!SERVE_)\w+|AWS_ENDPOINT_URL\w*|AWS_REGION|AWS_DEFAULT_REGION)$")


# --------------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    return parse_args_parser().parse_args(argv)


def parse_args_parser() -> argparse.ArgumentParser:
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
    ap.add_argument("--finish-resources", help="custom resources per finish task, JSON (split layout)")
    ap.add_argument("--max-finishing", type=int, default=2,
                    help="finish tasks in flight at once (default 2: bounds memory, and a task that reserves no CPU "
                    "gets a worker process of its own per concurrent call, each start costing more than a finish)")
    ap.add_argument("--max-errored-blocks", type=int, default=faults.DEFAULT_ERRORED_BLOCKS,
                    help="blocks that may fail beyond their retries (their inputs lost to this run, named in the "
                    "summary, exit code 3) before one more aborts the run (default %(default)s; -1: no limit)")
    ap.add_argument("--stats", action="store_true", help="log Ray Data's per-stage statistics at the end")
    ap.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or "local",
                    help="Ray cluster (default: RAY_ADDRESS, as set by `ray job submit`, else a local Ray)")
    return ap


def _spilled_bytes() -> int:
    from ray._private.internal_api import memory_summary

    try:
        text = memory_summary(stats_only=True)
    except Exception:  # noqa: BLE001 - a statistic, never worth failing the job for
        return -1
    m = re.search(r"Spilled (\d+) MiB", text)
    return int(m.group(1)) * 2**20 if m else 0


def _first_inputs(args, settings: Settings, most: int) -> int:
    """How many inputs the listing starts with, up to ``most`` (one listing call on S3): sizes the actor pool of a
    run that has fewer inputs than actors."""
    found = itertools.islice(sources.iter_videos(args.source, timeout_s=settings.http_timeout_s, images=args.images),
                             most if args.limit is None else min(most, args.limit))
    return sum(1 for _ in found)


def connect(args) -> None:
    """Ray: a local one started here (``--ray-address local``), else the cluster at the address."""
    local = args.ray_address == "local"
    if local and "ray" not in sys.modules:
        # token authentication, as Ray 2.60 does by default for a local Ray, said explicitly (no warning); read by
        # Ray when it is imported
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    env = {k: v for k, v in os.environ.items() if PASSED_ENV.match(k)}
    if local:  # a local Ray started here must not outlive a driver killed outright
        from jobs import reaper

        reaper.start(os.getpid())
    # The settings travel with the tasks (as JSON); the environment is passed on (FRAMEPIPE_*, AWS endpoint and
    # region) only to a cluster joined from elsewhere. A local Ray started here inherits this process's environment,
    # and a job submitted with `ray job submit` runs in the cluster's own, with the job's runtime env reaching every
    # task: no runtime env of ours, so that the workers are plain ones (the raylets' prestarted workers serve the
    # first tasks and actors instead of new processes started for a runtime env: seconds per worker).
    submitted = JOB_CONFIG_ENV in os.environ
    ray.init(address=args.ray_address, ignore_reinit_error=True, log_to_driver=False,
             **({"include_dashboard": False} if local else {} if submitted else {"runtime_env": {"env_vars": env}}))


def run(args) -> dict:
    """The backfill, on the Ray ``connect`` joined (joined here if not yet); its summary."""
    import ray

    if not ray.is_initialized():
        connect(args)
    with ray_noise.filtered_stderr():  # after Ray's own processes started: they keep the real stderr
        return _run(args)


def _run(args) -> dict:
    import ray

    settings = Settings().with_overrides(models=args.models)
    started = time.perf_counter()
    res = plan_resources(args, ray.cluster_resources())
    first = _first_inputs(args, settings, res.actors)
    if first < res.actors:  # a small run: no model loaded for an actor that would get nothing to do
        res = dataclasses.replace(res, actors=max(1, first))
    log.info("resources: %s", res)
    attempts = faults.start_attempts()
    ctx = StageContext.of(settings, args.dest, args.force, uuid.uuid4().hex, attempts)
    driver = (FusedDriver if res.layout == "fused" else SplitDriver)(args, ctx)
    with faults.ErroredBlocks() as errored:
        if first:  # else nothing is listed: no dataset, no model loaded
            ds = build_dataset(args, settings, res, ctx.run_id, attempts)
            driver.drive(ds.iter_batches(batch_size=None, batch_format="numpy"))
            if args.stats:
                log.info("Ray Data stats:\n%s", ds.stats())
        driver.finish()
    out = driver.summary.as_dict()
    out["faults"] = fault_report(driver, attempts, errored.count)
    if not args.no_people:  # the person registry, incrementally: ids, names and merges of earlier runs kept
        from framepipe.people import registry  # the driver alone needs it (pandas, scipy): workers import this module too

        try:
            _, updates, _ = registry.update_destination(args.dest, settings.people_max_distance,
                                                     settings.people_max_count, models=settings.models)
            out["people_registry"] = {m: vars(u) for m, u in updates.items()}
        except Exception as e:  # the videos are done and marked; `framepipe people DEST` can redo this step
            log.exception("updating the person registry failed")
            out["people_registry"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    out.update(
        seconds=round(time.perf_counter() - started, 1),
        first_output_s=round(driver.first_output_s - driver.wall0, 1) if driver.first_output_s else None,
        peak_object_store_bytes=int(driver.peak_store),
        spilled_bytes=_spilled_bytes(),
        decode_nodes=sorted(driver.placement["decode"]),
        analyzer_nodes=sorted(driver.placement["analyzer"]),
    )
    for line in driver.summary.failures:
        log.warning("failed: %s", line)
    return out


def fault_report(driver, attempts, errored_blocks: int) -> dict:
    """What the run lost and redid (jobs/faults.py): nodes lost and joined, work retried, actors restarted, blocks
    dropped under the error budget, and the inputs whose work started and never ended (lost to this run)."""
    import ray

    driver.nodes.sample(force=True)
    try:
        seen = ray.get(attempts.report.remote(), timeout=60)
    except Exception as e:  # noqa: BLE001 - a report, never worth failing the job for
        log.warning("no retry report: %s", e)
        seen = {"tasks_retried": None, "videos_retried": None, "actors_restarted": None, "unfinished": []}
    lost = seen.pop("unfinished")
    retried = seen["tasks_retried"]
    if retried is not None and driver.finish_retries:
        retried["finish"] = retried.get("finish", 0) + driver.finish_retries
    return {"nodes_lost": driver.nodes.lost, "nodes_joined": driver.nodes.joined, **seen,
            "errored_blocks": errored_blocks, "lost": len(lost), "lost_inputs": lost[:faults.MOST_NAMED]}


def preflight(args) -> None:
    """What a bad argument would fail on inside Ray, checked before Ray starts (a typed error): the settings, the
    source (its listing's first page: a missing folder, bucket or credentials) and, for a local Ray whose workers
    share this machine, the model pack (on a cluster the workers' own image holds it)."""
    settings = Settings().with_overrides(models=args.models)
    next(iter(sources.iter_videos(args.source, timeout_s=settings.http_timeout_s, images=args.images)), None)
    if args.ray_address == "local":
        from framepipe.faces import resolve_pack

        resolve_pack(settings.models, settings.model_root)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        preflight(args)
    except FramepipeError as e:
        print(f"backfill: failed: {e.line}", file=sys.stderr)
        return 1
    except ValidationError as e:
        print(f"backfill: invalid setting: {e.errors()[0]['msg']}", file=sys.stderr)
        return 2
    connect(args)  # before anything imports Ray: a local Ray's auth mode is read at import
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
    if out["faults"]["errored_blocks"] or out["faults"]["lost"]:
        log.error("%d inputs lost to this run (%d blocks dropped): run it again to take them (no done marker)",
                  out["faults"]["lost"], out["faults"]["errored_blocks"])
        return faults.LOST_EXIT_CODE
    return 0


if __name__ == "__main__":
    # run through the module's real name, so the functions and classes Ray ships refer to jobs.backfill, not __main__
    from jobs.backfill import main as module_main

    sys.exit(module_main())
