"""framepipe: find the people in videos.

The core library: decode, faces, clustering, selection, storage and the manifest schema.
It imports no Ray; ``jobs/`` and ``serve/`` call into it.
"""

from framepipe.config import Settings
from framepipe.errors import FramepipeError

__version__ = "0.2.0"

__all__ = ["Settings", "FramepipeError", "__version__"]
