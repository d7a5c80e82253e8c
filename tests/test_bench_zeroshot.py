"""benchmarks/bench_zeroshot.py (the `make bench` zero-shot rows) at its smallest: the figures come
out and the rows render from what it returns."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of the checkout, not an installed package
from benchmarks import bench_zeroshot as bench  # noqa: E402


def test_the_rows_render_from_a_small_run() -> None:
    result = {"scoring": bench.bench_scoring(codebook_size=64, repeats=1), "codec": bench.bench_codec(frames=5)}
    s, c = result["scoring"], result["codec"]
    assert all(s[f"threads_{n}"]["scored_mvalues_per_s"] > 0 and s[f"threads_{n}"]["randn_mvalues_per_s"] > 0 for n in (1, 2))
    assert c["zeroshot"]["decode_fps"] > 0 and c["latent"]["decode_fps"] > 0 and c["zeroshot"]["atoms"] in (1, 2, 4, 8, 16, 32)
    rows = bench.table_rows(result)
    assert len(rows) == 2 and all(row.startswith("| ") and row.count(" | ") == 3 for row in rows)


def test_the_readme_summary_renders() -> None:
    from benchmarks.readme_figures import _zeroshot_summary

    scoring = {"codebook_size": 4096, "dim": 6336, **{f"threads_{n}": {"scored_mvalues_per_s": 40.0, "randn_mvalues_per_s": 80.0} for n in (1, 2)}}
    codec = {"zeroshot": {"codec": "zeroshot_tiny", "decode_fps": 8.0, "encode_fps": 1.0}, "latent": {"decode_fps": 10.0}}
    text = _zeroshot_summary({"scoring": scoring, "codec": codec})
    assert "Zero-shot codec." in text and "0.50x torch.randn" in text and "0.80x the latent" in text
