"""Names that every front door must agree on: a video's id and the key of its done marker.

``video_id`` is computed from what the user gave (the same rule on success and on a failure before the video
could be opened), so a retried input always lands on the same folder and the same manifest row.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from urllib.parse import urlparse

DONE = "_done"  # DEST/_done/<video_id>.<key>: written last for a finished video
MADE_WITH = "_made_with"  # DEST/<video_id>/_made_with: the marker of the run whose outputs are in the folder

def location(source: str) -> str:
    """Where an input lives: the absolute path of a local file (``file://`` URLs too), else the URL as given."""
    if source.startswith("file://"):
        source = urlparse(source).path
    elif "://" in source:
        return source
    return os.path.abspath(os.path.expanduser(source))


def video_id(source: str) -> str:
    """``<file name without extension>-<8 hex of its location>``: readable, and stable for the same input."""
    where = location(source)
    path = urlparse(where).path if "://" in where else where
    stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:60].strip("._") or "video"
    return f"{slug}-{hashlib.sha1(where.encode()).hexdigest()[:8]}"


def settings_key(settings) -> str:
    """A hash of the settings that change a video's outputs (``Settings.output_settings()``, declared with each
    field in config.py), and of the model pack's calibration (the people step's thresholds when they are not
    set)."""
    from framepipe import calibration

    data = settings.model_dump(include=set(settings.output_settings()))
    cal = calibration.lookup(None, None, settings.models)
    data["calibration"] = [cal.pack, cal.match_similarity, cal.link_similarity]
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def done_marker(vid: str, identity: str, settings) -> str:
    """The marker's name under ``DEST/_done/``: the video id plus a hash of the object's identity (ETag, or size
    and mtime), the result-changing settings, and the framepipe and schema versions (an upgrade redoes all)."""
    from framepipe import __version__
    from framepipe.schema import SCHEMA_VERSION

    key = f"{identity}|{settings_key(settings)}|framepipe={__version__}|schema={SCHEMA_VERSION}"
    return f"{vid}.{hashlib.sha1(key.encode()).hexdigest()[:16]}"
