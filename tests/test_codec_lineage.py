"""``gvc info`` names the codec a stream was made with and its lineage (codecs/lineage.py), from
codec.json alone: no torch. The fine-tuned codec here is a copy of checkpoints/latent_tiny's
codec.json with a lineage added and resealed (the fingerprint leaves provenance out, so the
copy is still the fixture stream's codec)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gvc_train.codecs.codec_meta import CodecFolderError, read_codec_json
from gvc_train.codecs.lineage import lineage_rows, run_name, short_commit
from gvc_train.component_checks import sealed_json

from conftest import REPO

GENERIC = REPO / "checkpoints" / "latent_tiny"
STREAM = REPO / "tests" / "fixtures" / "latent_tiny_carphone13_q2.gvc"  # made with latent_tiny
RECIPE = "# lightning.pytorch==2.6.6\nseed_everything: 0\ntrainer:\n  logger:\n  - class_path: x.WandbLogger\n    init_args:\n      name: {run}\n      save_dir: runs/{run}\n"


def lineage() -> dict:
    generic = read_codec_json(GENERIC)
    parent = {
        "path": "checkpoints/latent_tiny", "kind": "codec", "family": "latent", "fingerprint": generic["fingerprint"],
        "component_fingerprints": generic["component_fingerprints"], "recipe": generic["provenance"]["recipe"],
        "git_commit": "8bbccc7f00d1e2a3b4c5d6e7f8091a2b3c4d5e6f", "global_step": 5500, "train_seconds": 2721.7,
    }  # fmt: skip
    grandparent = {**parent, "path": "exports/latent_generic", "fingerprint": "ab" * 32}
    return {"parent": parent, "loaded": {"latent_codec": "codec"}, "trained": ["codec"], "frozen": ["tokenizer"], "lora": None,
            "ancestors": [grandparent]}  # fmt: skip


def fine_tuned_copy(folder: Path, lineage_value: object, seal: bool = True) -> Path:
    meta = json.loads((GENERIC / "codec.json").read_text())
    meta["provenance"] = {**meta["provenance"], "recipe": RECIPE.format(run="latent_codec_vtest"), "lineage": lineage_value}
    del meta["checksum"]
    folder.mkdir(parents=True)
    text = sealed_json(meta) if seal else json.dumps({**meta, "checksum": "0" * 64})
    (folder / "codec.json").write_text(text)
    return folder


def test_a_codec_without_lineage_was_trained_from_scratch() -> None:
    assert lineage_rows(read_codec_json(GENERIC)) == ["trained from scratch"]


def test_lineage_rows_of_a_fine_tuned_codec(tmp_path: Path) -> None:
    meta = read_codec_json(fine_tuned_copy(tmp_path / "ft", lineage()))
    assert meta["fingerprint"] == read_codec_json(GENERIC)["fingerprint"]
    fp = meta["fingerprint"][:16]
    assert lineage_rows(meta) == [
        f"parent      checkpoints/latent_tiny  codec {fp}  (latent)",
        "parent run  latent_codec_shards_tiny: 5,500 steps, 2,722 s, commit 8bbccc7",
        "fine-tune   run latent_codec_vtest  trained [codec]  frozen [tokenizer]  lora -",
        "loaded      latent_codec -> codec",
        f"ancestors   1: exports/latent_generic  codec {'ab' * 8}  (latent)",
    ]


def test_lineage_rows_show_lora_and_survive_odd_fields() -> None:
    lora = {**lineage(), "lora": {"context_model": {"r": 4, "alpha": 8, "targets": ["qkv", "proj"]}}, "ancestors": []}
    rows = lineage_rows({"provenance": {"lineage": lora}})
    assert rows[2].endswith("lora context_model r=4 alpha=8 [qkv, proj]") and len(rows) == 4
    odd = lineage_rows({"provenance": {"lineage": {"parent": {"global_step": "many"}, "trained": "codec"}}})
    assert odd[:3] == ["parent      ?  ? ?", "parent run  ? steps, ? s, commit ?", "fine-tune   trained ?  frozen ?  lora -"]
    assert lineage_rows({"provenance": {"lineage": [1]}}) == ["lineage     unreadable (a list, not an object)"]
    assert short_commit("814d53780fc0e7b-dirty") == "814d537-dirty" and run_name("seed: 0\n") is None


_INFO_WITHOUT_TORCH = """
import json, sys
from gvc_train.codecs.cli import main
status = main(sys.argv[1:])
assert "torch" not in sys.modules, "gvc info imported torch"
sys.exit(status)
"""


def _gvc_info(*args: str, cwd: Path, codec_path: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "GVC_CODEC_PATH": codec_path, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", _INFO_WITHOUT_TORCH, "info", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_gvc_info_finds_the_codec_and_prints_its_lineage_without_torch(tmp_path: Path) -> None:
    found = fine_tuned_copy(tmp_path / "codecs" / "latent_vtest", lineage())
    proc = _gvc_info(str(STREAM), cwd=REPO, codec_path=str(tmp_path / "codecs"))  # searched before checkpoints/
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-6] == f"codec       {found}"
    assert lines[-5].startswith("parent      checkpoints/latent_tiny  codec ") and "trained [codec]" in lines[-3]
    proc = _gvc_info(str(STREAM), "--json", cwd=REPO, codec_path=str(tmp_path / "codecs"))
    codec = json.loads(proc.stdout)["codec"]
    assert codec["folder"] == str(found) and codec["lineage"]["parent"]["global_step"] == 5500
    proc = _gvc_info(str(STREAM), cwd=REPO)  # the generic codec in checkpoints/
    assert proc.returncode == 0 and proc.stdout.splitlines()[-2:] == ["codec       checkpoints/latent_tiny", "trained from scratch"], proc.stderr


def test_gvc_info_without_a_codec_and_with_a_wrong_or_edited_one(tmp_path: Path) -> None:
    proc = _gvc_info(str(STREAM), cwd=tmp_path)  # no checkpoints/ here
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "codec       not found (pass --codec DIR)", proc.stderr
    assert json.loads(_gvc_info(str(STREAM), "--json", cwd=tmp_path).stdout)["codec"] is None
    proc = _gvc_info(str(STREAM), "--codec", str(REPO / "checkpoints" / "progressive_tiny"), cwd=tmp_path)
    assert proc.returncode == 2 and "the stream was made with" in proc.stderr and proc.stderr.count("\n") == 1
    edited = fine_tuned_copy(tmp_path / "edited", lineage(), seal=False)
    with pytest.raises(CodecFolderError):
        read_codec_json(edited)
    proc = _gvc_info(str(STREAM), "--codec", str(edited), cwd=tmp_path)
    assert proc.returncode == 2 and "checksum" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
