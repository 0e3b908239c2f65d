"""`framepipe report`: the static HTML contact sheet, checked in a real headless browser (Debian's chromium
driven by selenium through chromedriver), and written next to the manifests on S3."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import unquote

import boto3
import pytest

from conftest import MEDIA, ROOT, run_cli

pytestmark = [pytest.mark.models, pytest.mark.browser]

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("FRAMEPIPE_ARTIFACTS", ROOT / ".artifacts"))

ALL_IMAGES_LOADED = """
const imgs = Array.from(document.images);
const next = imgs.find(i => !i.complete);
if (next) next.scrollIntoView();  // lazy images load once near the viewport
return {total: imgs.length,
        pending: imgs.filter(i => !i.complete).length,
        broken: imgs.filter(i => i.complete && i.naturalWidth === 0).map(i => i.getAttribute('src'))};
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("FRAMEPIPE_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> None:
    """A full-page screenshot under .artifacts/ (or $FRAMEPIPE_ARTIFACTS), for a person to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height, 600), 6000))
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(ARTIFACTS / name))
    driver.set_window_size(1400, 1000)


def open_page(driver, path: Path) -> dict:
    """Load a page from disk and wait until every image is done, scrolling to each that has not loaded yet."""
    driver.get(path.as_uri())
    deadline = time.time() + 30
    while True:
        state = driver.execute_script(ALL_IMAGES_LOADED)
        if state["pending"] == 0 or time.time() > deadline:
            return state
        time.sleep(0.05)


def test_report_opens_from_disk_with_every_image_and_one_card_per_person(library, browser):
    from selenium.webdriver.common.by import By

    from framepipe import manifests

    dest, results = library["dest"], library["results"]
    per_video = manifests.load_people(dest).groupby("video_id").size().to_dict()  # the manifest's people
    proc = run_cli("report", str(dest), timeout=300)
    assert proc.returncode == 0, proc.stderr
    index_html = dest / "report" / "index.html"
    assert proc.stdout.strip() == f"report: {index_html}"

    state = open_page(browser, index_html)
    assert state["pending"] == 0 and not state["broken"], state
    cards = browser.find_elements(By.CSS_SELECTOR, ".video-card")
    assert len(cards) == len(results)
    failed = browser.find_elements(By.CSS_SELECTOR, ".video-card.failed")
    assert [c.get_attribute("data-video-id") for c in failed] == [results["broken"].video_id]
    assert "not a video" in failed[0].text.lower() or "damaged" in failed[0].text.lower(), failed[0].text
    faces_on_index = browser.find_elements(By.CSS_SELECTOR, ".video-card .faces img")
    assert len(faces_on_index) == sum(len(r.talent_frames) for r in results.values())
    screenshot(browser, "report_index.png")

    montage = results["videos/composed/talking_heads_montage.mp4"]
    for key, result in results.items():
        state = open_page(browser, dest / "report" / "videos" / f"{result.video_id}.html")
        assert state["pending"] == 0 and not state["broken"], (key, state)
        persons = browser.find_elements(By.CSS_SELECTOR, ".person-card")
        assert len(persons) == per_video.get(result.video_id, 0) == len(result.talent_frames), key
        assert [int(p.get_attribute("data-person-id")) for p in persons] == [t.person_id for t in result.talent_frames]
        assert len(browser.find_elements(By.CSS_SELECTOR, "img.rep")) == len(result.representative_frames), key
        # face crop + best frame per card, the strip, nothing else
        assert state["total"] == 2 * len(result.talent_frames) + len(result.representative_frames), key
        if result.status == "succeeded":
            meta = browser.find_element(By.ID, "metadata").text
            assert f"{result.video.width} x {result.video.height}" in meta, (key, meta)
        if result is montage:
            screenshot(browser, "report_video.png")
            # a timeline bar per stretch on screen: the woman seen at 11-19 s and again at 38.6-43.6 s has two
            bars = [len(p.find_elements(By.CSS_SELECTOR, ".tick")) for p in persons]
            assert all(b >= 1 for b in bars) and max(bars) == 2, bars


def test_people_section_lists_each_global_person_with_their_videos(library, browser):
    from selenium.webdriver.common.by import By

    from framepipe import manifests

    dest = library["dest"]
    proc = run_cli("people", str(dest), "--no-report", timeout=300)
    assert proc.returncode == 0, proc.stderr
    first = int(manifests.load_people_index(dest).global_person_id.min())
    proc = run_cli("people", str(dest), "--name", f"{first}=Named Person", timeout=300)  # a name, shown below
    assert proc.returncode == 0, proc.stderr
    index = manifests.load_people_index(dest)
    state = open_page(browser, dest / "report" / "index.html")
    assert state["pending"] == 0 and not state["broken"], state
    assert not browser.find_elements(By.ID, "index-stale")  # the index covers every person
    sections = browser.find_elements(By.CSS_SELECTOR, ".global-person")
    assert len(sections) == index.global_person_id.nunique()
    for s in sections:
        gid = int(s.get_attribute("data-global-person-id"))
        rows = index[index.global_person_id == gid]
        shown = [a.get_attribute("data-video-id") for a in s.find_elements(By.CSS_SELECTOR, ".appearance")]
        assert sorted(shown) == sorted(rows.video_id), gid
        assert int(s.get_attribute("data-videos")) == rows.video_id.nunique()
    named = browser.find_element(By.ID, f"person-{first}")
    assert named.find_element(By.CSS_SELECTOR, ".person-name").text == "Named Person"
    assert set(index[index.global_person_id == first].name) == {"Named Person"}
    screenshot(browser, "report_people.png")
    # the badge on a person's card links to their global person
    gid = sections[0].get_attribute("data-global-person-id")
    video_page = sections[0].find_element(By.CSS_SELECTOR, ".appearance").get_attribute("href")
    browser.get(video_page)
    assert browser.find_elements(By.CSS_SELECTOR, f'.person-card a.badge[href$="#person-{gid}"]'), video_page


def test_report_and_people_on_s3_write_next_to_the_manifests(bucket, s3_server):
    s3 = boto3.client("s3")
    for name in ("retalking_3.mp4", "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"):
        s3.upload_file(str(MEDIA / "videos/talking_heads" / name), bucket, f"in/{name}")
        proc = run_cli("extract", f"s3://{bucket}/in/{name}", "--out", f"s3://{bucket}/out", env_extra=s3_server["env"])
        assert proc.returncode == 0, proc.stderr
    proc = run_cli("people", f"s3://{bucket}/out", env_extra=s3_server["env"])
    assert proc.returncode == 0, proc.stderr
    assert "2 people in 2 inputs -> 1 distinct people, 1 in more than one input" in proc.stdout
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]}
    assert "out/manifests/people_index.parquet" in keys
    head = s3.head_object(Bucket=bucket, Key="out/report/index.html")
    assert head["ContentType"].startswith("text/html")
    pages = sorted(k for k in keys if k.startswith("out/report/") and k.endswith(".html"))
    assert len(pages) == 3  # index + 2 videos
    for page in pages:
        html = s3.get_object(Bucket=bucket, Key=page)["Body"].read().decode()
        srcs = re.findall(r'<img[^>]* src="([^"]+)"', html)
        assert srcs, page
        for src in srcs:  # every relative image link names an object that exists
            target = os.path.normpath(os.path.join(os.path.dirname(page), unquote(src)))
            assert target in keys, (page, src)
    assert 'id="index-stale"' not in s3.get_object(Bucket=bucket, Key="out/report/index.html")["Body"].read().decode()

    # a video added after `framepipe people`: the report says the index is behind
    s3.upload_file(str(MEDIA / "videos/talking_heads/retalking_5.mp4"), bucket, "in/retalking_5.mp4")
    assert run_cli("extract", f"s3://{bucket}/in/retalking_5.mp4", "--out", f"s3://{bucket}/out",
                   env_extra=s3_server["env"]).returncode == 0
    assert run_cli("report", f"s3://{bucket}/out", env_extra=s3_server["env"]).returncode == 0
    html = s3.get_object(Bucket=bucket, Key="out/report/index.html")["Body"].read().decode()
    assert 'id="index-stale"' in html and "1 person was added after the last" in html


def test_report_of_a_missing_destination_is_one_clear_line():
    proc = run_cli("report", "/nonexistent/framepipe-out")
    assert proc.returncode == 1 and proc.stderr.strip() == "framepipe: no such directory: /nonexistent/framepipe-out"


def test_a_killed_report_leaves_nothing_half_written(library, tmp_path):
    """A report killed while writing leaves its marker and ``*.part`` pages; the next report sweeps them (the sweep
    walks the report's folder only then: not a listing of every page at each report)."""
    from framepipe import report
    from framepipe.storage import HOST

    dest = tmp_path / "dest"
    shutil.copytree(library["dest"], dest)
    report.write(str(dest))
    assert not (dest / "report" / "_writing").exists()
    page = next((dest / "report" / "videos").glob("*.html"))
    dead = Path(f"{page}.{HOST}~999999999~deadbeef.part")  # a writer whose process is gone
    dead.write_text("half a page")
    report.write(str(dest))  # no marker: a clean last run, no sweep
    assert dead.exists()
    (dest / "report" / "_writing").write_bytes(b"")  # as a run killed mid-write leaves it
    report.write(str(dest))
    assert not dead.exists() and not (dest / "report" / "_writing").exists()
