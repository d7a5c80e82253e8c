"""Every recipe under recipes/finetune/ trains from its real parent in checkpoints/ (2 steps on
tiny data), validates, checkpoints and exports; the export records its lineage; a LoRA fine-tune
exports plain weights that decode without peft installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gvc_train.cli import run as gvc_train_cli
from gvc_train.codecs.families import FAMILIES
from gvc_train.components import load_component, read_component_meta, save_component
from gvc_train.data.sample_videos import sample_video
from gvc_train.export import export_checkpoint
from gvc_train.recipe_bases import load_recipe

from conftest import REPO, tiny_fit_args

FINETUNE = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "recipes" / "finetune").glob("*.yaml"))
CHECKPOINTS = REPO / "checkpoints"
LATENT_TINY = CHECKPOINTS / "latent_tiny"
# Families whose codecs no stage trains: the zero-shot ones wrap a controlled transformer, whose
# fine-tune is recipes/finetune/controlled_cgvc_lora.yaml (then gvc-zeroshot --model EXPORT).
NO_STAGE = {"zeroshot", "zeroshot_text", "zeroshot_wan"}


def _init_from(recipe: str) -> str:
    return load_recipe(REPO / recipe)["model"]["init_args"]["finetune"]["init_from"]


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """A working directory whose checkpoints/ holds the repository's exports (the recipes name
    them by relative path) and, where one is not committed yet, a stand-in built from the
    recipe's own config."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    for folder in CHECKPOINTS.iterdir():
        (tmp_path / "checkpoints" / folder.name).symlink_to(folder)
    return tmp_path


def _stand_in_parent(recipe: str, workdir: Path) -> None:
    parent = workdir / _init_from(recipe)
    if parent.exists():
        return
    model = load_recipe(REPO / recipe)["model"]["init_args"]["model"]
    module_path, cls_name = model["class_path"].rsplit(".", 1)
    cls = getattr(__import__(module_path, fromlist=[cls_name]), cls_name)
    torch.manual_seed(0)
    component = cls(**model["init_args"])
    component.update(force=True)
    save_component(component, parent, "ssf")


def _run(args: list[str]):
    return gvc_train_cli([*args, "--trainer.max_steps=2", "--trainer.limit_val_batches=1"])


def _latent_shards(root: Path, tokenizer: str | Path) -> dict[str, str]:
    from gvc_train.data.latent_shards import write_latent_shards

    write_latent_shards([sample_video("carphone_pristine.mp4")], str(root), tokenizer=str(tokenizer), clip_frames=9,
                        max_frames_per_video=27, crop=64, maxcount=2, workers=1, progress=False, log=lambda line: None)  # fmt: skip
    return {"train": str(root / "*.tar"), "val": str(root / "*.tar")}


def _latent_args(recipe: str, shards: dict[str, str], fingerprint_from: str | Path, crop: int) -> list[str]:
    init = "--data.init_args"
    return [
        "fit", "--config", str(REPO / recipe),
        f"{init}.train_shards={shards['train']}", f"{init}.val_shards={shards['val']}", f"{init}.latent_frames=2",
        f"{init}.crop_size={crop}", f"{init}.batch_size=2", f"{init}.num_workers=0", f"{init}.samples_per_epoch=4",
        f"{init}.tokenizer_fingerprint={fingerprint_from}", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.precision=32-true",
    ]  # fmt: skip


def _export(trainer, out: Path) -> dict:
    last = Path(trainer.checkpoint_callback.dirpath, "last.ckpt")
    assert last.is_file()
    export_checkpoint(last, out)
    return json.loads((out / "codec.json").read_text()) if (out / "codec.json").exists() else {}


def test_every_family_with_a_stage_has_a_finetune_recipe() -> None:
    exported = set()
    for recipe in FINETUNE:
        config = load_recipe(REPO / recipe)
        assert config["model"]["init_args"].get("finetune"), f"{recipe} has no finetune: section"
        exported.add(_init_from(recipe))
    families = {json.loads((CHECKPOINTS / Path(p).name / "codec.json").read_text())["family"] for p in exported if (CHECKPOINTS / Path(p).name / "codec.json").exists()}
    assert {"latent", "progressive", "controlled"} <= families
    assert any("ssf" in p for p in exported)
    assert set(FAMILIES) - NO_STAGE - families - {"controlled_text", "ssf"} == set(), "a family without a fine-tune recipe"


@pytest.mark.parametrize("recipe", FINETUNE)
def test_a_finetune_keeps_its_parents_model_config_and_lambdas(recipe: str) -> None:
    """The recipe repeats the parent's constructor config and rate-point lambdas (the parent's
    own training recipe, in its codec.json provenance): a fine-tune that moved its rate points
    would not be comparable with its parent at the same quality index."""
    import yaml

    init_args = load_recipe(REPO / recipe)["model"]["init_args"]
    parent = CHECKPOINTS / Path(_init_from(recipe)).name
    parent_recipe = yaml.safe_load(json.loads((parent / "codec.json").read_text())["provenance"]["recipe"])["model"]["init_args"]
    if "lambdas" in init_args and "lambdas" in parent_recipe:
        assert init_args["lambdas"] == parent_recipe["lambdas"], f"{recipe}: lambdas {init_args['lambdas']}, its parent {parent.name}'s {parent_recipe['lambdas']}"
    for key in ("codec", "model"):  # the component's constructor config, where the recipe repeats it
        if isinstance(init_args.get(key), dict) and isinstance(parent_recipe.get(key), dict) and "init_args" in init_args[key]:
            ours, theirs = init_args[key]["init_args"], parent_recipe[key]["init_args"]
            assert {k: theirs.get(k) for k in ours} == ours, f"{recipe}: {key} config differs from its parent {parent.name}'s"


def test_the_domain_chain_tokenizer_decoder_then_latent_codec(tiny_shards, workdir: Path) -> None:
    """make finetune-demo in miniature: the decoder fine-tune keeps the encoder, so the latent
    codec's fine-tune starts from the parent codec on the new tokenizer."""
    recipe = "recipes/finetune/tokenizer_decoder.yaml"
    trainer = _run(tiny_fit_args(REPO / recipe, tiny_shards)).trainer
    assert trainer.global_step == 2 and "val/psnr" in trainer.callback_metrics
    _export(trainer, workdir / "exports" / "tokenizer_vtest")
    ours, parent = load_component(workdir / "exports/tokenizer_vtest", "tokenizer"), load_component(LATENT_TINY, "tokenizer")
    theirs = parent.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items() if k.startswith("encoder."))
    assert any(not torch.equal(v, theirs[k]) for k, v in ours.state_dict().items() if k.startswith("decoder."))
    lineage = read_component_meta(workdir / "exports/tokenizer_vtest", "tokenizer")["provenance"]["lineage"]
    assert lineage["trained"] == ["tokenizer.decoder"]

    recipe = "recipes/finetune/latent_codec.yaml"
    shards = _latent_shards(workdir / "latent", workdir / "exports/tokenizer_vtest")
    trainer = _run(_latent_args(recipe, shards, workdir / "exports/tokenizer_vtest", crop=4)).trainer
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["val/loss"])
    codec = _export(trainer, workdir / "exports" / "latent_vtest")
    parent_codec = json.loads((LATENT_TINY / "codec.json").read_text())
    lineage = codec["provenance"]["lineage"]
    assert lineage["parent"]["fingerprint"] == parent_codec["fingerprint"]
    assert lineage["frozen_components"] == {"tokenizer": "same encoder"}
    assert codec["family"] == parent_codec["family"] and codec["fingerprint"] != parent_codec["fingerprint"]


def test_lora_on_the_progressive_context_model_exports_plain_weights_that_decode_without_peft(workdir: Path) -> None:
    recipe = "recipes/finetune/progressive_context_lora.yaml"
    shards = _latent_shards(workdir / "latent", CHECKPOINTS / "progressive_tiny")  # its own tokenizer's latents
    trainer = _run(_latent_args(recipe, shards, "checkpoints/progressive_tiny", crop=8)).trainer
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["val/bpp"])
    out = workdir / "exports" / "progressive_lora"
    codec = _export(trainer, out)
    assert codec["provenance"]["lineage"]["lora"]["r"] == 4
    from safetensors import safe_open

    with safe_open(out / "context_model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lora_" in k or "base_layer" in k]
    assert read_component_meta(out, "context_model")["config"] == read_component_meta(CHECKPOINTS / "progressive_tiny", "context_model")["config"]
    # the adapters moved the weights (lora_B leaves zero after the first step)
    parent = load_component(CHECKPOINTS / "progressive_tiny", "context_model").state_dict()
    merged = load_component(out, "context_model").state_dict()
    assert any(not torch.equal(merged[k], parent[k]) for k in parent if k.endswith("qkv.weight"))
    # a process where peft cannot be imported codes a clip with the export and decodes it
    script = f"""
import sys
sys.modules["peft"] = None  # import peft -> ImportError
import numpy as np
from gvc_train.codecs.base import open_codec
from gvc_train.data.sample_videos import sample_video
codec = open_codec({str(out)!r})
recon, decoded = [], []
codec.encode(sample_video("carphone_pristine.mp4"), "s.gvc", codec.num_rate_points - 1, max_frames=5, on_recon=recon.append)
codec.decode("s.gvc", decoded.append)
assert len(decoded) == 5 and all(np.array_equal(a, b) for a, b in zip(recon, decoded))
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=workdir)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_lora_on_the_controlled_transformer_starts_the_ema_from_the_parent(workdir: Path, tmp_path: Path) -> None:
    from gvc_train.data.shard_controls import control_specs
    from gvc_train.data.shard_writer import write_shards

    root = tmp_path / "control"
    write_shards([sample_video("carphone_pristine.mp4")], str(root), clip_frames=9, max_frames_per_video=18, resize_short=48,
                 crop=(32, 48), controls=control_specs(["luma"], {"luma": {"extractor": {"factor": 4}}}), log=lambda line: None)  # fmt: skip
    recipe = "recipes/finetune/controlled_cgvc_lora.yaml"
    args = [
        "fit", "--config", str(REPO / recipe), f"--data.init_args.train_shards={root}/*.tar", f"--data.init_args.val_shards={root}/*.tar",
        "--data.init_args.clip_frames=9", "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
        "--data.init_args.samples_per_epoch=4", "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
        "--model.init_args.latent_frames_range=[2,3]",
    ]  # fmt: skip
    cli = _run(args)
    assert cli.trainer.global_step == 2 and "val/loss" in cli.trainer.callback_metrics
    codec = _export(cli.trainer, workdir / "exports" / "cgvc_lora")
    assert codec["family"] == "controlled" and codec["provenance"]["lineage"]["lora"]["targets"] == ["q", "kv", "out"]
    parent = load_component(CHECKPOINTS / "cgvc_tiny", "transformer").state_dict()
    merged = load_component(workdir / "exports" / "cgvc_lora", "transformer").state_dict()
    assert merged.keys() == parent.keys()
    # only adapted layers can differ from the parent (the EMA of the merged weights)
    changed = [k for k in parent if not torch.equal(merged[k], parent[k])]
    assert changed and all(k.rsplit(".", 2)[-2] in ("q", "kv", "out") for k in changed), changed[:5]


def test_the_ssf_finetune_trains_motion_and_residual_only(tiny_shards, workdir: Path) -> None:
    recipe = "recipes/finetune/ssf.yaml"
    _stand_in_parent(recipe, workdir)
    shrink = []  # the recipe's widths are the parent's: a fine-tune cannot shrink them
    trainer = _run([*tiny_fit_args(REPO / recipe, tiny_shards), *shrink]).trainer
    assert trainer.global_step == 2
    out = workdir / "exports" / "ssf_vtest"
    _export(trainer, out)
    parent = load_component(workdir / _init_from(recipe), "ssf").state_dict()
    tuned = load_component(out, "ssf").state_dict()
    changed = {k.split(".")[0] for k in parent if k in tuned and not torch.equal(tuned[k], parent[k]) and "_cdf" not in k and "_offset" not in k and "_cdf_length" not in k}
    assert changed and changed <= {"motion_encoder", "motion_decoder", "res_encoder", "res_decoder"}, changed
