"""Bad input through the CLI: one line on stderr, a non-zero exit, a failed result.json, never a hang."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import MEDIA, PACK, ROOT, VIDEOS, free_port, run_cli

pytestmark = [pytest.mark.models]


def _one_line_failure(proc, error_type: str):
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"framepipe: failed: {error_type}:"), lines[0]


def _failed_record(out: Path, error_type: str):
    docs = [json.loads(p.read_text()) for p in out.glob("*/result.json")]
    assert len(docs) == 1
    assert docs[0]["status"] == "failed" and docs[0]["error"]["type"] == error_type


@pytest.mark.parametrize(
    "name,error_type",
    [
        ("not_a_video.mp4", "not_a_video"),
        ("truncated_no_index.mp4", "corrupt_video"),
        ("header_only.mp4", "no_frames"),
    ],
)
def test_bad_files(made, tmp_path, name, error_type):
    proc = run_cli("extract", str(made(name)), "--out", str(tmp_path))
    _one_line_failure(proc, error_type)
    _failed_record(tmp_path, error_type)


def test_missing_file(tmp_path):
    proc = run_cli("extract", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "out"))
    _one_line_failure(proc, "source_not_found")
    _failed_record(tmp_path / "out", "source_not_found")


def test_unreachable_url(tmp_path):
    proc = run_cli("extract", f"http://127.0.0.1:{free_port()}/video.mp4", "--out", str(tmp_path))
    _one_line_failure(proc, "source_unreachable")


def test_url_not_found(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = run_cli("extract", f"http://127.0.0.1:{server.server_port}/no/such/video.mp4", "--out", str(tmp_path))
    finally:
        server.shutdown()
    _one_line_failure(proc, "source_not_found")


def test_truncated_tail_keeps_what_decodes(made, tmp_path):
    """The index promises 1091 frames but the data stops half-way: bounded, partial result, a warning."""
    proc = run_cli("extract", str(made("truncated_tail.mp4")), "--out", str(tmp_path), "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "succeeded"
    cut = [float(re.search(r"truncated at ([0-9.]+) s", w).group(1)) for w in doc["warnings"] if "truncated" in w]
    assert len(cut) == 1 and 15 < cut[0] < 30, doc["warnings"]
    segments = VIDEOS["videos/composed/talking_heads_montage.mp4"]["segments"]
    # people whose segment holds a sample time (one per second from 0) before the cut
    expected = {name for start, end, name in segments if any(start <= k < end for k in range(int(cut[0]) + 1))}
    assert len(doc["talent_frames"]) == len(expected), (cut, expected)
    assert len(doc["representative_frames"]) == 10


def test_no_faces_is_a_result_or_an_error_on_request(tmp_path):
    video = str(MEDIA / "videos/caminandes_10s_no_humans.mp4")
    ok = run_cli("extract", video, "--out", str(tmp_path / "a"), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["talent_frames"] == []
    proc = run_cli("extract", video, "--out", str(tmp_path / "b"), "--require-faces")
    _one_line_failure(proc, "no_faces")


def test_too_long_video_is_refused(tmp_path):
    proc = run_cli("extract", str(MEDIA / "videos/pbs_oval_office_4people.mp4"), "--out", str(tmp_path),
                   env_extra={"FRAMEPIPE_MAX_DURATION_S": "5"})
    _one_line_failure(proc, "input_too_large")


def test_missing_model_pack(tmp_path):
    proc = run_cli("extract", str(MEDIA / "videos/tears_of_steel_10s.mp4"), "--out", str(tmp_path),
                   "--models", str(tmp_path / "no_pack"))
    _one_line_failure(proc, "model_not_found")


def test_a_pack_that_cannot_be_found_or_downloaded_names_models(tmp_path):
    """A pack name neither under the model root nor downloadable (offline, or not one of insightface's): one
    line that says how to name a pack, no download chatter."""
    proc = run_cli("extract", str(MEDIA / "videos/tears_of_steel_10s.mp4"), "--out", str(tmp_path / "out"),
                   env_extra={"FRAMEPIPE_MODELS": "no_such_pack", "FRAMEPIPE_MODEL_ROOT": str(tmp_path / "root")})
    _one_line_failure(proc, "model_not_found")
    assert "no_such_pack" in proc.stderr and "--models PATH" in proc.stderr, proc.stderr


def test_listing_a_bucket_without_credentials_is_one_line(tmp_path):
    """``extract s3://bucket`` (a prefix: listed) with no AWS credentials: source_unreachable, as for one object
    (it was exit 70, NoCredentialsError)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(FRAMEPIPE_MODELS=str(PACK), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true",
               AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.run([sys.executable, "-m", "framepipe", "extract", "s3://bucket-only", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    _one_line_failure(proc, "source_unreachable")
    assert "credentials" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,error_type", [
    (["--source", "/nonexistent/missing_folder"], "source_not_found"),
    (["--source", str(MEDIA / "videos" / "talking_heads"), "--models", "no/such/pack"], "model_not_found"),
])
def test_backfill_checks_its_arguments_before_ray(tmp_path, args, error_type):
    """A missing source or model pack: one typed line and exit 1 before Ray starts (it was a traceback after Ray's
    start, or hundreds of lines of Ray's)."""
    env = {**os.environ, "FRAMEPIPE_MODELS": str(PACK)}
    proc = subprocess.run([sys.executable, "-m", "jobs.backfill", *args, "--dest", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"backfill: failed: {error_type}: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "out").exists()
