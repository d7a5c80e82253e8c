"""benchmarks/bench_controls.py (the `make bench` controls rows) at its smallest: one control, one
clip of carphone, one repeat; its rows and the README summary read what it writes."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of the checkout, not an installed package
from benchmarks.bench_controls import bench_controls, table_rows  # noqa: E402
from benchmarks.readme_figures import _controls_summary  # noqa: E402


def test_luma_from_shards_is_what_was_extracted_and_the_rows_render() -> None:
    result = bench_controls(clips=1, repeats=1, names=("luma",), videos=("carphone",))
    for video in result["videos"].values():
        assert video["same_as_on_the_fly"] == {"luma": True}  # the shard members decode to the timed loop's controls
        assert video["shard_clips_per_s"]["set"] > 0 and video["pyav_1thread_fps"] > 0
    rows = table_rows(result)
    assert len(rows) == 3 and all(row.startswith("| ") and row.count(" | ") == 3 for row in rows)
    assert "Extracting luma runs at" in _controls_summary(result)
