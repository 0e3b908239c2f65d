"""Photos are one-frame inputs: upright by their EXIF orientation, RGBA PNGs read, honest metadata."""

from __future__ import annotations

import pytest
from PIL import Image

from conftest import MEDIA

pytestmark = [pytest.mark.models]


def test_photo_is_a_one_frame_input_upright_by_its_exif_orientation(tmp_path, settings, model):
    from framepipe import pipeline

    original = MEDIA / "photos/face_recognition/barack_obama/obama.jpg"
    sideways = tmp_path / "obama_sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; shown rotated 90 degrees clockwise (what phones write)
    with Image.open(original) as im:
        w, h = im.size
        im.rotate(90, expand=True).save(sideways, exif=exif, quality=95)
    upright = pipeline.extract(str(original), str(tmp_path / "out"), settings, model=model, raise_errors=True)
    turned = pipeline.extract(str(sideways), str(tmp_path / "out"), settings, model=model, raise_errors=True)
    for r in (upright, turned):
        assert r.video.media_type == "image" and (r.video.width, r.video.height) == (w, h)
        assert r.video.total_frames == 1 and r.video.fps is None and r.video.duration_s is None
        assert len(r.talent_frames) == 1 and len(r.representative_frames) == 1
        assert not any("short video" in x for x in r.warnings), r.warnings
    # the face is found upright in both: same quality (a sideways face would score far lower or not be found)
    assert abs(turned.talent_frames[0].quality - upright.talent_frames[0].quality) < 0.03


def test_rgba_png_and_group_photo(tmp_path, settings, model):
    from framepipe import pipeline

    png = MEDIA / "photos/face_recognition/lin_manuel_miranda/lin-manuel-miranda.png"
    with Image.open(png) as im:
        assert im.mode == "RGBA"
    r = pipeline.extract(str(png), str(tmp_path), settings, model=model, raise_errors=True)
    assert r.video.media_type == "image" and len(r.talent_frames) == 1
    group = pipeline.extract(str(MEDIA / "photos/face_recognition/groups/kit_with_rose.jpg"), str(tmp_path), settings,
                           model=model, raise_errors=True)
    assert len(group.talent_frames) == 2
