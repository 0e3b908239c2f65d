"""The backfill's plan: which layout, what each stage asks of the cluster, and the Ray Data dataset that wires
the stages (``jobs/backfill.py``)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass


from framepipe.config import Settings

from jobs.listing import list_inputs
from jobs.stages import FaceActor, StageContext, VideoActor, decode_video

log = logging.getLogger("framepipe.backfill")

DECODE_MEMORY = 512 * 2**20  # bytes of memory a decode task reserves


@dataclass
class Resources:
    layout: str  # "split" (decode tasks -> model actors -> finish tasks) or "fused" (a whole video per actor call)
    actors: int
    actor_cpus: float
    actor_gpus: float
    actor_resources: dict
    decode_cpus: float
    decode_resources: dict
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
                     args.decode_cpus, json.loads(args.decode_resources or "{}"), threads)


def build_dataset(args, settings: Settings, res: Resources, run_id: str = "", attempts=None):
    """The dataset, with its error budget (``DataContext.max_errored_blocks``, captured here with the dataset). Its
    retries are Ray Data's defaults, which Ray 2.60 no longer lets a job set per stage (jobs/faults.py)."""
    import ray
    from ray.data import ActorPoolStrategy

    ray.data.DataContext.get_current().max_errored_blocks = args.max_errored_blocks
    ctx = StageContext.of(settings, args.dest, args.force, run_id, attempts)
    actor_ctx = ctx.with_settings(settings.with_overrides(
        intra_op_threads=res.actor_threads, device="cuda" if res.actor_gpus else settings.device))
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
            # a whole video per call, and one more queued on each actor: it starts its next video the moment it
            # ends one (Ray Data's hand-off of the next call cost 0.25-0.34 s a video). The price: a video may wait
            # behind one other on its actor while another actor is free, so a run's tail can be one video longer
            compute=ActorPoolStrategy(size=res.actors, max_tasks_in_flight_per_actor=2),
            num_cpus=res.actor_cpus,
            resources=res.actor_resources or None,
            fn_constructor_kwargs={"ctx": actor_ctx},
        )
    ds = ds.map_batches(
        decode_video,
        batch_size=1,
        num_cpus=res.decode_cpus,
        # A decode task holds its frames in flight and its decoders' buffers. Declaring that also keeps Ray Data
        # from fusing decoding into the model actors (it fuses stages whose remote args are equal), so decoding and
        # inference overlap. Ray Data spreads tasks and actors over the nodes itself (its default strategy).
        memory=DECODE_MEMORY,
        resources=res.decode_resources or None,
        fn_kwargs={"ctx": ctx},
    )
    return ds.map_batches(
        FaceActor,
        batch_size=None,  # whole blocks: a decode task's yields, whole tracking segments (stages.FRAMES_PER_BATCH)
        batch_format="numpy",
        compute=ActorPoolStrategy(size=res.actors),  # all started at once: no ramp-up while frames queue
        num_cpus=res.actor_cpus,
        num_gpus=res.actor_gpus,
        resources=res.actor_resources or None,
        fn_constructor_kwargs={"ctx": actor_ctx},
    )
