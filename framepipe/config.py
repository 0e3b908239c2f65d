"""The one place for framepipe's configuration.

Every setting has a default, can be set from the environment as ``FRAMEPIPE_<NAME>`` (for example
``FRAMEPIPE_MODELS=/models/buffalo_l``), and can be overridden per call (CLI flags, job options, HTTP
request settings) with :meth:`Settings.with_overrides`. Each field says its concern (models, sampling, ...: the
sections of docs/configuration.md, generated from this module) and whether it changes a video's outputs (the done
marker hashes those as a whole: :meth:`Settings.output_settings`). The service's own settings are in
``serve/settings.py`` (``FRAMEPIPE_SERVE_<NAME>``).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CONCERNS = (
    "models",
    "sampling",
    "faces and people",
    "frames written",
    "input caps and failures",
    "runtime",
    "registry and search",
    "cost",
)


def setting(concern: str, *, outputs: bool = False, **field):
    """A field of :class:`Settings` with the concern it belongs to (how docs/configuration.md groups it) and
    whether it changes a video's outputs (``outputs``: the done marker hashes those, so that changing any other
    setting never redoes a bucket)."""
    assert concern in CONCERNS, concern
    return Field(json_schema_extra={"concern": concern, "outputs": outputs}, **field)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FRAMEPIPE_", frozen=True, extra="forbid")

    models: str = setting(
        "models",
        outputs=True,
        default="buffalo_l",
        description="InsightFace model pack: a folder path, or a pack name looked up under model_root "
        "(insightface downloads known names such as buffalo_l on first use).",
    )
    model_root: str = setting(
        "models", default="~/.insightface", description="Where named packs live: <model_root>/models/<name>/."
    )
    det_size: int = setting(
        "models",
        outputs=True,
        default=640,
        ge=128,
        le=1920,
        description="Detector input size (square, multiple of 32).",
    )
    device: Literal["auto", "cpu", "cuda"] = setting(
        "runtime", default="auto", description="auto = CUDA when onnxruntime has it."
    )
    intra_op_threads: int = setting(
        "runtime", default=0, ge=0, description="onnxruntime threads per model; 0 = number of cores."
    )

    sample_fps: float = setting(
        "sampling", outputs=True, default=1.0, gt=0, le=30, description="Frames analysed per second of video."
    )
    min_samples: int = setting(
        "sampling",
        outputs=True,
        default=20,
        ge=10,
        description="Short videos are sampled more densely so that at least this many frames "
        "(or all of them) are analysed.",
    )
    sampling: Literal["exact", "keyframes"] = setting(
        "sampling",
        outputs=True,
        default="exact",
        description="exact = the frame at each sample time; keyframes = the nearest keyframe (faster).",
    )
    decode_threads: int = setting(
        "runtime", default=1, ge=0, description="Threads of each decoder (0 = the decoder's choice)."
    )
    decode_workers: int = setting(
        "runtime",
        default=2,
        ge=1,
        le=16,
        description="Parts of a long video decoded in parallel, each by its own reader.",
    )
    prefetch_frames: int = setting(
        "runtime",
        default=4,
        ge=1,
        le=64,
        description="Decoded frames queued ahead of the models (decoding runs in its own thread).",
    )
    analyze_batch: int = setting(
        "runtime",
        default=4,
        ge=1,
        le=64,
        description="Frames handed to the face models per call (their faces embedded together).",
    )
    backend: Literal["auto", "decord", "pyav"] = setting(
        "runtime",
        default="auto",
        description="Decoder: auto = PyAV skipping unneeded frames (H.264/HEVC in MP4/MOV/MKV), else decord, "
        "else PyAV.",
    )

    min_det_score: float = setting(
        "faces and people",
        outputs=True,
        default=0.5,
        ge=0,
        le=1,
        description="Detector confidence below which a face is dropped.",
    )
    min_face_px: int = setting(
        "faces and people",
        outputs=True,
        default=28,
        ge=8,
        description="Faces whose shorter bbox side is smaller are dropped.",
    )

    require_faces: bool = setting(
        "input caps and failures",
        outputs=True,
        default=False,
        description="Treat a video in which no person is found as failed.",
    )

    cluster_max_distance: float | None = setting(
        "faces and people",
        outputs=True,
        default=None,
        gt=0,
        lt=2,
        description="Average-linkage cosine distance (1 - cos) under which the tracks of one video "
        "are one person; None = the model pack's calibration (framepipe/calibration.py).",
    )
    track_max_distance: float | None = setting(
        "faces and people",
        outputs=True,
        default=None,
        gt=0,
        lt=2,
        description="Faces in consecutive samples of one shot are one track when their cosine "
        "distance is at most this (None = the pack's calibration) ...",
    )
    track_min_iou: float = setting(
        "faces and people",
        outputs=True,
        default=0.1,
        ge=0,
        le=1,
        description="... and their boxes overlap at least this much (IoU).",
    )
    track_min_det_score: float = setting(
        "faces and people",
        outputs=True,
        default=0.7,
        ge=0,
        le=1,
        description="A track becomes (part of) a person only when one of its faces was detected with "
        "this confidence ...",
    )
    track_min_quality: float = setting(
        "faces and people",
        outputs=True,
        default=0.3,
        ge=0,
        le=1,
        description="... or has this quality (blurred background faces and partial faces at the "
        "frame's edges do neither).",
    )
    shot_cut_distance: float = setting(
        "faces and people",
        outputs=True,
        default=0.2,
        gt=0,
        le=1,
        description="Colour-histogram distance (0-1) between consecutive samples above which a shot "
        "cut lies between them.",
    )
    reuse_track_embeddings: bool = setting(
        "faces and people",
        outputs=True,
        default=True,
        description="A face that surely continues a track (the next sample of the same shot, its box where the "
        "track's was, nobody near) takes the embedding of the look at the track before it, when that look and the "
        "next agree, instead of running the recognizer; a track's first, clearest and last faces are always "
        "embedded (framepipe/tracking.py). False: every face is embedded.",
    )
    singleton_min_quality: float = setting(
        "faces and people",
        outputs=True,
        default=0.45,
        ge=0,
        le=1,
        description="A person seen in one sample only is kept if that face scores at least this.",
    )
    people_max_distance: float | None = setting(
        "registry and search",
        default=None,
        gt=0,
        lt=2,
        description="The person registry: cosine distance under which the people of different "
        "videos (or of one video, never seen together) are one person; None = the model pack's calibration.",
    )
    search_min_similarity: float | None = setting(
        "registry and search",
        default=None,
        ge=-1,
        le=1,
        description="framepipe search: cosine similarity from which a person is a result; None = "
        "the model pack's calibration (bench/search.py).",
    )
    people_max_count: int = setting(
        "registry and search",
        default=8_000,
        ge=1,
        description="framepipe people, a registry's first build: most people of one part of the graph of "
        "look-alikes clustered in memory at once (memory grows with its square: 8,000 take about 0.5 GB); a larger "
        "part's people are attached one by one through the index.",
    )

    representative_count: int = setting(
        "frames written",
        outputs=True,
        default=10,
        ge=1,
        le=100,
        description="Representative frames per video (fewer only when the video has fewer distinct frames).",
    )
    black_luma: float = setting(
        "frames written",
        outputs=True,
        default=20.0,
        description="Frames darker than this mean luma (0-255) count as black.",
    )
    blur_min: float = setting(
        "frames written",
        outputs=True,
        default=20.0,
        description="Frames whose Laplacian variance (at 320 px wide) is below this count as blurred.",
    )
    duplicate_max_distance: int = setting(
        "frames written",
        outputs=True,
        default=6,
        ge=0,
        le=64,
        description="Frames whose 64-bit difference hashes differ in fewer bits are duplicates.",
    )

    jpeg_quality: int = setting(
        "frames written",
        outputs=True,
        default=90,
        ge=10,
        le=100,
        description="JPEG quality of every frame and face crop written.",
    )

    max_bytes: int = setting(
        "input caps and failures",
        outputs=True,
        default=20 * 1024**3,
        gt=0,
        description="Inputs larger than this are refused.",
    )
    max_duration_s: float = setting(
        "input caps and failures",
        outputs=True,
        default=4 * 3600.0,
        gt=0,
        description="Videos longer than this are refused.",
    )
    max_pixels: int = setting(
        "input caps and failures",
        outputs=True,
        default=7680 * 4320,
        gt=0,
        description="Frames larger than 8K are refused.",
    )
    http_timeout_s: float = setting(
        "runtime", default=30.0, gt=0, description="Connect/read timeout for http(s) and S3 sources."
    )
    follow_redirects: bool = setting(
        "input caps and failures",
        default=True,
        description="Follow HTTP redirects of http(s) sources (the HTTP service turns this off: never fetch "
        "where a redirect points).",
    )

    hourly_price_usd: float | None = setting(
        "cost",
        default=None,
        ge=0,
        description="Price of the device per hour; None = the default for the device in use.",
    )
    price_gpu_usd_per_hour: float = setting(
        "cost", default=0.526, ge=0, description="AWS g4dn.xlarge (1x T4) on-demand, us-east-1."
    )
    price_cpu_usd_per_hour: float = setting(
        "cost", default=0.17, ge=0, description="AWS c6i.xlarge (4 vCPU) on-demand, us-east-1."
    )

    @field_validator("models")
    @classmethod
    def _absolute_pack_folder(cls, value: str) -> str:
        """A pack folder given relative to the current directory works from any worker's directory too."""
        path = os.path.expanduser(value)
        return os.path.abspath(path) if os.path.isdir(path) else value

    @classmethod
    def output_settings(cls) -> frozenset[str]:
        """The settings that change a video's outputs (hashed as a whole into the done marker's key)."""
        return frozenset(n for n, f in cls.model_fields.items() if f.json_schema_extra["outputs"])

    def with_overrides(self, **overrides) -> "Settings":
        """A copy with the given non-None fields replaced (validated)."""
        data = self.model_dump()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return Settings.model_validate(data)

    def hourly_price(self, device: str) -> float:
        if self.hourly_price_usd is not None:
            return self.hourly_price_usd
        return self.price_gpu_usd_per_hour if device == "cuda" else self.price_cpu_usd_per_hour
