"""notebooks/explore_manifests.ipynb, run top to bottom by a real Jupyter kernel (nbclient) against outputs
made in the test: a local destination with a people index, and an S3 destination (moto) without one."""

from __future__ import annotations

import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import MEDIA, ROOT

pytestmark = [pytest.mark.models]

NOTEBOOK = ROOT / "notebooks" / "explore_manifests.ipynb"


def run_notebook(dest: str, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("FRAMEPIPE_DEST", dest)
    # the kernel is this interpreter's (the venv's), whatever `python` is on PATH
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on any cell error
    return nb


def html_outputs(nb, marker: str) -> list[str]:
    return [
        o["data"]["text/html"]
        for c in nb.cells if c.cell_type == "code"
        for o in c.outputs if "text/html" in o.get("data", {}) and marker in o["data"]["text/html"]
    ]


def test_notebook_runs_on_a_local_destination_with_a_people_index(library, monkeypatch):
    from framepipe import manifests
    from framepipe.people import registry

    dest = library["dest"]
    registry.update_destination(dest, 0.6)
    first = int(manifests.load_people_index(dest).global_person_id.min())
    registry.update_destination(dest, 0.6, corrections=registry.Corrections(names={first: "Notebook Name"}))
    index = manifests.load_people_index(dest)
    people = manifests.load_people(dest)
    nb = run_notebook(str(dest), monkeypatch)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    n_ok = sum(r.status == "succeeded" for r in library["results"].values())
    assert f"{len(library['results'])} inputs ({n_ok} succeeded), {len(people)} people" in text
    [faces] = html_outputs(nb, 'class="video-faces"')
    assert faces.count("<img") == len(people)
    [strip] = html_outputs(nb, 'class="representative"')
    assert strip.count("<img") == 10
    [person] = html_outputs(nb, 'class="global-person"')
    most = index.groupby("global_person_id")["video_id"].nunique().max()
    assert person.count("<img") >= most >= 2
    assert "Notebook Name" in text or any("Notebook Name" in h for h in html_outputs(nb, "Notebook Name"))
    plots = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(plots) == 2  # who is on screen when, and throughput


@pytest.mark.timeout(600)
def test_notebook_runs_on_an_s3_destination_without_a_people_index(bucket, s3_server, settings, model, monkeypatch):
    from framepipe import pipeline

    for key in ("videos/talking_heads/retalking_3.mp4", "videos/talking_heads/sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"):
        pipeline.extract(str(MEDIA / key), f"s3://{bucket}/out", settings, model=model, raise_errors=True)
    nb = run_notebook(f"s3://{bucket}/out", monkeypatch)
    [faces] = html_outputs(nb, 'class="video-faces"')
    assert faces.count("<img") == 2
    [person] = html_outputs(nb, 'class="global-person"')
    assert person.count("<img") == 2  # the same woman in both clips, joined in memory
