"""make finetune-demo's own logic (the training and evaluation it drives are tested in
test_finetune_recipes.py and the gvc eval tests): the figures it prints, and its refusals."""

from __future__ import annotations

import pytest

from gvc_train import finetune_demo


def _report() -> dict:
    rates, psnr, ssim = [0.02, 0.04, 0.08, 0.16], [26.0, 28.5, 31.0, 33.0], [0.90, 0.93, 0.95, 0.96]
    points = []
    for name, scale in (("latent_tiny", 1.0), ("latent_vtest", 0.8)):  # the fine-tune: 20% fewer bits everywhere
        points += [
            {"video": "heldout", "codec": name, "quality": i, "bpp": r * scale, "metrics": {"psnr": p, "ms_ssim": s}}
            for i, (r, p, s) in enumerate(zip(rates, psnr, ssim))
        ]
    return {"points": points, "metrics": ["psnr", "ms_ssim"]}


def test_the_printed_bd_rate_is_the_fine_tunes_against_the_generic_codec() -> None:
    rows = finetune_demo.finetune_rows(_report(), "latent_vtest", "latent_tiny")
    assert [r["metric"] for r in rows] == ["psnr", "ms_ssim"]
    assert all(r["bd_rate_percent"] == pytest.approx(-20.0, abs=1e-6) for r in rows)
    lines = finetune_demo.summary_lines(rows, "600-695")
    assert lines[0].startswith("BD-rate (psnr) fine-tuned vs generic on vtest frames 600-695: -20.0%; BD-psnr +")
    assert lines[0].endswith(" dB") and not lines[1].endswith(" dB")
    no_overlap = [{**rows[0], "bd_rate_percent": None}]
    assert ": none (the curves share no psnr interval); BD-psnr +" in finetune_demo.summary_lines(no_overlap, "600-695")[0]
    narrow = [{**rows[1], "bd_rate_warning": "curves overlap on only 9%", "bd_rate_overlap": 0.09}]
    assert "-20.0%, over 9% of the generic codec's ms_ssim range" in finetune_demo.summary_lines(narrow, "600-695")[0]


def test_without_the_vtest_shards_it_says_what_to_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert finetune_demo.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "make -C data vtest-shards" in err
