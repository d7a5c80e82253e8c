"""benchmarks/bench_controlled.py (the `make bench` controlled-family rows) at its smallest: the
codec folder it builds codes and decodes, its sampling and training figures come out, and its
rows and README summary render from what it returns."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of the checkout, not an installed package
from benchmarks import bench_controlled as bench  # noqa: E402
from benchmarks.readme_figures import _controlled_summary  # noqa: E402


def test_the_rows_render_from_a_small_run(monkeypatch) -> None:
    monkeypatch.setattr(bench, "CLIP_FRAMES", 5)  # training clips of 5 frames: the same code, a fraction of the time
    result = {
        "sampling": bench.bench_sampling(steps=2, repeats=1),
        "decode": bench.bench_decode(frames=5, repeats=1),
        "training": bench.bench_training(steps=1, repeats=1),
    }
    s, d, t = result["sampling"], result["decode"], result["training"]
    assert s["unguided_steps_per_s"] > s["guided_steps_per_s"] > 0  # guidance runs two forwards a step
    assert d["keyframes"] == [0, 4] and d["controls"] == ["luma"] and d["decode_fps"] > 0 and d["latent_decode_fps"] > 0
    assert t["batch_shape_BCTHW"] == [4, 3, 5, 144, 176] and t["lightning_steps_per_s"] > 0 and t["plain_steps_per_s"] > 0
    rows = bench.table_rows(result)
    assert len(rows) == 3 and all(row.startswith("| ") and row.count(" | ") == 3 for row in rows)
    assert "Controlled codec." in _controlled_summary(result)
