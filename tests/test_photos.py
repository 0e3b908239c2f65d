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


def test_a_close_up_filling_the_photo_and_a_half_turned_face_are_people(tmp_path, settings, model):
    """A photo is a user's reference: a close-up whose face fills the frame (which the detector alone does not
    find) and a clear but half-turned face (which the video gate would not list) each give their person, and the
    same person as the ordinary photo they come from."""
    import numpy as np

    from framepipe import manifests, pipeline

    source = MEDIA / "photos/lfw/Tony_Blair/Tony_Blair_0014.jpg"  # one face
    plain = pipeline.extract(str(source), str(tmp_path / "out"), settings, model=model, raise_errors=True)
    [x1, y1, x2, y2] = max(plain.talent_frames, key=lambda t: t.bbox[2] - t.bbox[0]).bbox
    close = tmp_path / "close_up.jpg"
    with Image.open(source) as im:  # the face alone, 3x: it fills the picture edge to edge
        im.crop((int(x1), int(y1), int(x2), int(y2))).resize((3 * int(x2 - x1), 3 * int(y2 - y1))).save(close)
    assert not model.analyze(np.asarray(Image.open(close))[:, :, ::-1].copy())  # the plain detector misses it
    r = pipeline.extract(str(close), str(tmp_path / "out"), settings, model=model, raise_errors=True)
    assert len(r.talent_frames) == 1
    turned = MEDIA / "lfw_view2/photos/Federico_Trillo_0001.jpg"  # detected surely (0.80), quality 0.37: frontal 0.06
    t = pipeline.extract(str(turned), str(tmp_path / "out"), settings, model=model, raise_errors=True)
    assert len(t.talent_frames) == 1 and t.talent_frames[0].quality < settings.singleton_min_quality

    people = manifests.load_people(str(tmp_path / "out"))
    emb = {row.video_id: np.asarray(row.embedding) for row in people.itertuples()}
    assert float(emb[r.video_id] @ emb[plain.video_id]) > 0.5  # the same man


def test_a_photo_is_decoded_as_its_codec_library_decodes_it(tmp_path):
    """A JPEG's pixels are libjpeg's (what OpenCV and PIL give), not FFmpeg's conversion of its full-range YUV,
    which is darker by about 0.6 levels and measurably changes a photo's embedding; a turned photo is turned
    upright from the same pixels."""
    import cv2
    import numpy as np

    from framepipe.video import open_video

    source = MEDIA / "photos/lfw/Tony_Blair/Tony_Blair_0014.jpg"
    sideways = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(source) as im:
        im.rotate(90, expand=True).save(sideways, exif=exif, quality=95)
    for path, expected in ((source, cv2.imread(str(source))),
                           (sideways, cv2.rotate(cv2.imread(str(sideways), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION),
                                                 cv2.ROTATE_90_CLOCKWISE))):
        stream = open_video(str(path))
        try:
            [frame] = list(stream.read([0.0]))
        finally:
            stream.close()
        assert frame.image.shape == expected.shape
        assert np.array_equal(frame.image, expected)
