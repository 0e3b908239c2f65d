"""The one place for framepipe's configuration.

Every setting has a default, can be set from the environment as ``FRAMEPIPE_<NAME>`` (for example
``FRAMEPIPE_MODELS=/models/buffalo_l``), and can be overridden per call (CLI flags, job options, HTTP
request settings) with :meth:`Settings.with_overrides`.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FRAMEPIPE_", frozen=True, extra="forbid")

    # --- models -------------------------------------------------------------------------------------
    models: str = Field(
        "buffalo_l",
        description="InsightFace model pack: a folder path, or a pack name looked up under model_root "
        "(insightface downloads known names such as buffalo_l on first use).",
    )
    model_root: str = Field("~/.insightface", description="Where named packs live: <model_root>/models/<name>/.")
    det_size: int = Field(640, ge=128, le=1920, description="Detector input size (square, multiple of 32).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when onnxruntime has it.")
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads per model; 0 = number of cores.")

    # --- sampling -----------------------------------------------------------------------------------
    sample_fps: float = Field(1.0, gt=0, le=30, description="Frames analysed per second of video.")
    min_samples: int = Field(
        20, ge=10, description="Short videos are sampled more densely so that at least this many frames "
        "(or all of them) are analysed."
    )
    sampling: Literal["exact", "keyframes"] = Field(
        "exact", description="exact = the frame at each sample time; keyframes = the nearest keyframe (faster)."
    )
    decode_threads: int = Field(1, ge=0, description="Threads of each decoder (0 = the decoder's choice).")
    decode_workers: int = Field(
        2, ge=1, le=16, description="Parts of a long video decoded in parallel, each by its own reader."
    )
    prefetch_frames: int = Field(
        4, ge=1, le=64, description="Decoded frames queued ahead of the models (decoding runs in its own thread)."
    )
    analyze_batch: int = Field(
        4, ge=1, le=64, description="Frames handed to the face models per call (their faces embedded together)."
    )
    backend: Literal["auto", "decord", "pyav"] = Field(
        "auto", description="Decoder: auto = PyAV skipping unneeded frames (H.264/HEVC in MP4/MOV/MKV), else decord, "
        "else PyAV."
    )

    # --- faces --------------------------------------------------------------------------------------
    min_det_score: float = Field(0.5, ge=0, le=1, description="Detector confidence below which a face is dropped.")
    min_face_px: int = Field(28, ge=8, description="Faces whose shorter bbox side is smaller are dropped.")

    require_faces: bool = Field(False, description="Treat a video in which no person is found as failed.")

    # --- people (clustering) ------------------------------------------------------------------------
    cluster_max_distance: float | None = Field(
        None, gt=0, lt=2, description="Average-linkage cosine distance (1 - cos) under which the tracks of one video "
        "are one person; None = the model pack's calibration (framepipe/calibration.py)."
    )
    track_max_distance: float | None = Field(
        None, gt=0, lt=2, description="Faces in consecutive samples of one shot are one track when their cosine "
        "distance is at most this (None = the pack's calibration) ..."
    )
    track_min_iou: float = Field(0.1, ge=0, le=1, description="... and their boxes overlap at least this much (IoU).")
    track_min_det_score: float = Field(
        0.7, ge=0, le=1, description="A track becomes (part of) a person only when one of its faces was detected with "
        "this confidence ...")
    track_min_quality: float = Field(
        0.3, ge=0, le=1, description="... or has this quality (blurred background faces and partial faces at the "
        "frame's edges do neither).")
    shot_cut_distance: float = Field(
        0.2, gt=0, le=1, description="Colour-histogram distance (0-1) between consecutive samples above which a shot "
        "cut lies between them."
    )
    singleton_min_quality: float = Field(
        0.45, ge=0, le=1, description="A person seen in one sample only is kept if that face scores at least this."
    )
    people_max_distance: float | None = Field(
        None, gt=0, lt=2, description="The person registry: cosine distance under which the people of different "
        "videos (or of one video, never seen together) are one person; None = the model pack's calibration."
    )
    search_min_similarity: float | None = Field(
        None, ge=-1, le=1, description="framepipe search: cosine similarity from which a person is a result; None = "
        "the model pack's calibration (bench/search.py)."
    )
    people_max_count: int = Field(
        30_000, ge=1, description="framepipe people: most people (per embedding model) clustered in memory; "
        "memory grows with the square (16,000 took 1.6 GB)."
    )

    # --- representative frames ----------------------------------------------------------------------
    representative_count: int = Field(10, ge=1, le=100)
    black_luma: float = Field(20.0, description="Frames darker than this mean luma (0-255) count as black.")
    blur_min: float = Field(
        20.0, description="Frames whose Laplacian variance (at 320 px wide) is below this count as blurred."
    )
    duplicate_max_distance: int = Field(
        6, ge=0, le=64, description="Frames whose 64-bit difference hashes differ in fewer bits are duplicates."
    )

    # --- output -------------------------------------------------------------------------------------
    jpeg_quality: int = Field(90, ge=10, le=100)

    # --- caps (bad input) ---------------------------------------------------------------------------
    max_bytes: int = Field(20 * 1024**3, gt=0, description="Inputs larger than this are refused.")
    max_duration_s: float = Field(4 * 3600.0, gt=0, description="Videos longer than this are refused.")
    max_pixels: int = Field(7680 * 4320, gt=0, description="Frames larger than 8K are refused.")
    http_timeout_s: float = Field(30.0, gt=0, description="Connect/read timeout for http(s) and S3 sources.")
    follow_redirects: bool = Field(
        True, description="Follow HTTP redirects of http(s) sources (the HTTP service turns this off: never fetch "
        "where a redirect points).")

    # --- cost ---------------------------------------------------------------------------------------
    hourly_price_usd: float | None = Field(
        None, ge=0, description="Price of the device per hour; None = the default for the device in use."
    )
    price_gpu_usd_per_hour: float = Field(0.526, ge=0, description="AWS g4dn.xlarge (1x T4) on-demand, us-east-1.")
    price_cpu_usd_per_hour: float = Field(0.17, ge=0, description="AWS c6i.xlarge (4 vCPU) on-demand, us-east-1.")

    @field_validator("models")
    @classmethod
    def _absolute_pack_folder(cls, value: str) -> str:
        """A pack folder given relative to the current directory works from any worker's directory too."""
        path = os.path.expanduser(value)
        return os.path.abspath(path) if os.path.isdir(path) else value

    def with_overrides(self, **overrides) -> "Settings":
        """A copy with the given non-None fields replaced (validated)."""
        data = self.model_dump()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return Settings.model_validate(data)

    def hourly_price(self, device: str) -> float:
        if self.hourly_price_usd is not None:
            return self.hourly_price_usd
        return self.price_gpu_usd_per_hour if device == "cuda" else self.price_cpu_usd_per_hour
