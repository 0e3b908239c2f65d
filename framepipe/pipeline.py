"""The per-video pipeline, and the same over many inputs in one process.

One video goes through four parts, each in its own module, whichever front door drives it:

    FrameSource (framesource.py)  -> Analyzer (analyzer.py)  -> VideoState (state.py)  -> outputs (outputs.py)
    sampled frames + measures        faces of each frame        people, frame picks        JPEGs, Parquet, result.json

* :func:`process_video` runs them in one process: ``framepipe extract``, and the Serve consumer (with an analyzer
  that calls the model deployment). Decoding runs in reader threads while the models run in the calling thread.
* The Ray backfill (``jobs/backfill.py``) runs the same parts on different workers: the FrameSource and the frame
  picks in decode tasks, the analyzer in an actor pool, the people and the outputs in a per-video finish task.
* :func:`process_many` runs :func:`process_video` over every input under a folder or prefix, with the backfill's
  done markers (``framepipe extract SRC_DIR --out DEST``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Callable

from framepipe import outputs, schema, sources, tracking
from framepipe.analyzer import Analyzer, LocalAnalyzer
from framepipe.config import Settings
from framepipe.framesource import Cancel, FrameSource, open_source
from framepipe.state import VideoState
from framepipe.storage import Destination
from framepipe.videorun import VideoRun, result_row

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (frames done, frames planned)

def analyse(fs: FrameSource, analyzer: Analyzer, state: VideoState, progress: Progress | None = None) -> None:
    """Every sampled frame of ``fs`` through the analyzer into ``state`` (frames in batches of
    ``analyzer.batch_size``; decoding goes on in the reader threads meanwhile)."""
    quality = fs.settings.jpeg_quality
    planned = len(fs.times)
    photo = fs.info.media_type == "image"  # a one-frame input: searched for close-ups too (FaceModel.detect)
    tracks = tracking.Tracks(fs.settings.shot_cut_distance, fs.settings.reuse_track_embeddings)

    def flush(batch):
        found = tracking.analyse_frames(analyzer, [f.image for f in batch], [f.measure.colour for f in batch], tracks,
                                        [(f.lane, f.index) for f in batch], photo)
        for f, faces in zip(batch, found):
            state.add(f.pts_s, f.measure, faces, lambda img=f.image: outputs.encode_jpeg(img, quality))
        if progress:
            progress(state.frames_sampled, planned)

    batch = []
    with fs.frames() as frames:
        for frame in frames:
            batch.append(frame)
            if len(batch) >= analyzer.batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    tracking.conclude(analyzer, tracks)  # the faces skipped since each track's last look


def analyse_video(source: str | FrameSource, settings: Settings, analyzer: Analyzer) -> VideoState:
    """The analysed state of one video (a source, or one already opened), nothing written (tuning scripts, search)."""
    fs = source if isinstance(source, FrameSource) else open_source(source, settings)
    try:
        state = VideoState(fs.info, settings)
        analyse(fs, analyzer, state)
        return state
    finally:
        fs.close()


def process_video(
    source: str,
    dest: str | Destination,
    settings: Settings,
    analyzer: Analyzer | Callable[[], Analyzer],
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    raise_errors: bool = False,
    run: VideoRun | None = None,
) -> schema.Result:
    """Process one input and write its outputs under ``dest/<video_id>/``.

    Bad input never raises (unless ``raise_errors``): the result has ``status: failed`` and a typed ``error``, and
    ``result.json`` plus the one-row ``video.parquet`` are written for it too. ``processing.duration_s`` is the wall
    time from opening the input to its outputs written. ``analyzer`` may be a function making it (a model that
    cannot load is then a failed video). ``cancel.stop(code, message)`` stops the work between frames: the video
    fails with that error, and nothing but its failed record is written. ``run``: the video's run, when the caller
    made it (with its done marker); else one is made here."""
    if run is None:
        destination = dest if isinstance(dest, Destination) else Destination(dest, timeout_s=settings.http_timeout_s)
        run = VideoRun(source, destination, settings)
    fs: FrameSource | None = None

    def build() -> schema.Result:
        nonlocal fs
        model = analyzer if isinstance(analyzer, Analyzer) else analyzer()
        run.analysed_by(model.device, model.pack)
        fs = open_source(source, settings, cancel)
        run.opened(fs)
        video = VideoState(fs.info, settings)
        analyse(fs, model, video, progress)
        if fs.cancel.is_set():
            raise fs.cancel.error
        return run.succeed(video.finish(), fs.warnings)

    try:
        return run.attempt(build, raise_errors)
    finally:
        if fs is not None:
            fs.close()


def extract(
    source: str,
    dest: str,
    settings: Settings | None = None,
    progress: Progress | None = None,
    model=None,
    raise_errors: bool = False,
) -> schema.Result:
    """:func:`process_video` with the models in this process (``model``: an already loaded
    :class:`~framepipe.faces.FaceModel`)."""
    settings = settings or Settings()
    analyzer = LocalAnalyzer(model, settings.analyze_batch) if model is not None else (
        lambda: LocalAnalyzer.load(settings))
    return process_video(source, dest, settings, analyzer, progress=progress, raise_errors=raise_errors)


# --------------------------------------------------------------------------------------------------
# many inputs: done markers, shared with the Ray backfill
# --------------------------------------------------------------------------------------------------


def mark_extracted(source: str, dest: str, settings: Settings, result: schema.Result) -> None:
    """The done marker of a single input ``framepipe extract`` just processed (always processed: the user asked
    for it), so that a later run over its folder skips it. Nothing when the source cannot be resolved (its
    failure is the result)."""
    from framepipe.errors import FramepipeError

    try:
        identity = sources.resolve(source, timeout_s=settings.http_timeout_s).identity
    except FramepipeError:
        return
    VideoRun(source, Destination(dest, timeout_s=settings.http_timeout_s), settings, identity=identity).mark_done(result)


def process_unless_done(
    source: str,
    identity: str,
    destination: Destination,
    settings: Settings,
    analyzer: Analyzer | Callable[[], Analyzer],
    force: bool = False,
    run_id: str = "",
    on_written: Callable[[], None] | None = None,
) -> schema.Result | None:
    """:func:`process_video` with the done markers (``framepipe extract SRC_DIR`` and the backfill's actors): None
    when the input is done already (same object, settings and versions), else its result, marked done when final.
    ``run_id``: an id written into the markers this run makes; an input this same run marked done (a call re-run
    after its output was lost with a node) gives back the result it wrote instead of None. ``analyzer`` may be a
    function making it, called only when there is work. ``on_written``: called between the outputs and the done
    marker (the backfill's failpoint)."""
    run = VideoRun(source, destination, settings, identity=identity, run_id=run_id)
    if not force:
        by = run.done_by()
        if by is not None and run_id and by == run_id:
            return run.written_result()
        if run.is_done(by):
            return None
    result = process_video(source, destination, settings, analyzer, run=run)
    if on_written is not None:
        on_written()
    run.mark_done(result)
    return result


@dataclass
class RunSummary:
    """What a run over many inputs did (the backfill prints the same fields)."""

    listed: int = 0
    skipped: int = 0  # done already (a marker for the same object, settings and versions)
    succeeded: int = 0
    failed: int = 0
    people: int = 0
    failures: list[str] = field(default_factory=list)

    def count(self, result: schema.Result) -> None:
        row = result_row(result)
        self.add(row["source"], row["status"], row["people"], row["error"])

    def add(self, source: str, status: str, people: int, error: str) -> None:
        if status == "succeeded":
            self.succeeded += 1
            self.people += people
        else:
            self.failed += 1
            self.failures.append(f"{source}: {error}")

    def as_dict(self) -> dict:
        return {"listed": self.listed, "skipped": self.skipped, "succeeded": self.succeeded, "failed": self.failed,
                "people": self.people}


def process_many(
    root: str,
    dest: str,
    settings: Settings,
    analyzer: Analyzer | None = None,
    force: bool = False,
    limit: int | None = None,
    images: bool = False,
    on_result: Callable[[schema.Result], None] | None = None,
) -> RunSummary:
    """Every video under a folder or ``s3://`` prefix, one after another in this process (models loaded once),
    with the same outputs and done markers as the Ray backfill: a re-run skips what is done."""
    destination = Destination(dest, timeout_s=settings.http_timeout_s)
    summary = RunSummary()
    # the models once, and only when an input is not done already
    load = (lambda: analyzer) if analyzer is not None else functools.cache(lambda: LocalAnalyzer.load(settings))
    for src in sources.iter_videos(root, timeout_s=settings.http_timeout_s, images=images):
        if limit is not None and summary.listed >= limit:
            break
        summary.listed += 1
        result = process_unless_done(src.source, src.identity, destination, settings, load, force=force)
        if result is None:
            summary.skipped += 1
            continue
        summary.count(result)
        if on_result:
            on_result(result)
    return summary
