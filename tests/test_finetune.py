"""Fine-tuning (gvc_train.lit.finetune): init_from with the fingerprint checked, named parts that
train or stay frozen, and the lineage an export records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from gvc_train.components import load_component, read_component_meta, save_component
from gvc_train.export import export_checkpoint
from gvc_train.lit.finetune import FineTune, FineTuneError
from gvc_train.lit.latent_codec import LatentCodecModule
from gvc_train.lit.tokenizer import TokenizerModule
from gvc_train.models import CausalVAE, LatentVideoCodec

from conftest import REPO

PARENT = REPO / "checkpoints" / "latent_tiny"


def _parent_codec() -> LatentVideoCodec:
    return LatentVideoCodec(**read_component_meta(PARENT, "latent_codec")["config"])


def _latent_stage(**finetune) -> LatentCodecModule:
    lambdas = [0.1 * 2**q for q in range(_parent_codec().num_qualities)]
    ft = FineTune(init_from=str(PARENT), **finetune)
    return LatentCodecModule(_parent_codec(), lambdas=lambdas, tokenizer_path=str(PARENT), lr=1e-3, finetune=ft)


def _fit(module: L.LightningModule, batch: dict, steps: int, root: Path) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(module, DataLoader([batch] * max(steps, 1), batch_size=None))
    return trainer


def _latent_batch() -> dict:
    torch.manual_seed(1)
    return {"latent": torch.randn(2, 16, 2, 8, 8)}


def test_init_from_a_codec_loads_its_weights_and_a_zero_step_export_is_the_parent(tmp_path: Path) -> None:
    stage = _latent_stage()
    parent = load_component(PARENT, "latent_codec")
    ours = stage.codec.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in parent.state_dict().items())
    trainer = _fit(stage, _latent_batch(), 0, tmp_path)
    trainer.save_checkpoint(tmp_path / "zero.ckpt")
    export_checkpoint(tmp_path / "zero.ckpt", tmp_path / "export")
    codec = json.loads((tmp_path / "export" / "codec.json").read_text())
    parent_meta = json.loads((PARENT / "codec.json").read_text())
    # the fingerprint covers config and weights: nothing changed, nothing was lost
    assert codec["fingerprint"] == parent_meta["fingerprint"]
    lineage = codec["provenance"]["lineage"]
    assert lineage["parent"]["fingerprint"] == parent_meta["fingerprint"]
    assert lineage["parent"]["recipe"] == parent_meta["provenance"]["recipe"]
    assert lineage["loaded"] == {"latent_codec": "latent_codec"}
    assert lineage["frozen_components"] == {"tokenizer": "same"}


def test_the_parent_fingerprint_and_config_are_checked(tmp_path: Path) -> None:
    fp = json.loads((PARENT / "codec.json").read_text())["fingerprint"]
    _latent_stage(expect_fingerprint=fp[:12])  # the right prefix passes
    with pytest.raises(FineTuneError, match=r"expects 00000000"):
        _latent_stage(expect_fingerprint="00000000")
    with pytest.raises(FineTuneError, match="at least 8 hex digits"):
        FineTune(init_from=str(PARENT), expect_fingerprint="abc")
    config = read_component_meta(PARENT, "latent_codec")["config"]
    other = LatentVideoCodec(**{**config, "channels": config["channels"] + 8})
    with pytest.raises(FineTuneError, match=r"config differs .* at channels: "):
        LatentCodecModule(other, lambdas=[0.1 * 2**q for q in range(other.num_qualities)], tokenizer_path=str(PARENT), finetune=FineTune(init_from=str(PARENT)))
    # a tampered parent is refused by the export checks
    copy = tmp_path / "tampered"
    shutil.copytree(PARENT, copy)
    weights = copy / "latent_codec.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(Exception, match="sha256"):
        LatentCodecModule(_parent_codec(), lambdas=[0.1 * 2**q for q in range(_parent_codec().num_qualities)], tokenizer_path=str(PARENT), finetune=FineTune(init_from=str(copy)))
    with pytest.raises(FineTuneError, match="is not a folder"):
        LatentCodecModule(_parent_codec(), lambdas=[0.1 * 2**q for q in range(_parent_codec().num_qualities)], tokenizer_path=str(PARENT), finetune=FineTune(init_from=str(tmp_path / "nowhere")))


def test_a_stage_tokenizer_with_another_encoder_is_refused_and_a_new_decoder_is_allowed(tmp_path: Path) -> None:
    tokenizer = load_component(PARENT, "tokenizer")
    with torch.no_grad():
        for p in tokenizer.decoder.parameters():
            p.add_(0.01)
    save_component(tokenizer, tmp_path / "new_decoder", "tokenizer")
    codec = _parent_codec()
    lambdas = [0.1 * 2**q for q in range(codec.num_qualities)]
    stage = LatentCodecModule(codec, lambdas=lambdas, tokenizer_path=str(tmp_path / "new_decoder"), finetune=FineTune(init_from=str(PARENT)))
    assert stage._lineage["frozen_components"] == {"tokenizer": "same encoder"}
    with torch.no_grad():
        for p in tokenizer.encoder.parameters():
            p.add_(0.01)
    save_component(tokenizer, tmp_path / "new_encoder", "tokenizer")
    with pytest.raises(FineTuneError, match="trained on another tokenizer"):
        LatentCodecModule(_parent_codec(), lambdas=lambdas, tokenizer_path=str(tmp_path / "new_encoder"), finetune=FineTune(init_from=str(PARENT)))


def test_freezing_the_entropy_models_trains_only_the_rest(tmp_path: Path) -> None:
    stage = _latent_stage(freeze=["latent_codec.entropy_models"])
    codec = stage.codec
    before = {n: p.detach().clone() for n, p in codec.named_parameters()}
    _fit(stage, _latent_batch(), 2, tmp_path)
    after = dict(codec.named_parameters())
    entropy = [n for n in before if n.split(".")[0] in ("h_a", "h_s", "entropy_params", "entropy_bottleneck")]
    assert entropy and all(torch.equal(before[n], after[n]) for n in entropy)
    assert not torch.equal(before["g_a.0.weight"], after["g_a.0.weight"])
    assert not codec.h_s.training and codec.g_a.training  # frozen parts stay in eval mode
    with pytest.raises(FineTuneError, match=r"no part 'latent_codec.nonsense'.*latent_codec.entropy_models"):
        _latent_stage(freeze=["latent_codec.nonsense"])
    with pytest.raises(FineTuneError, match="leaves nothing to train"):
        _latent_stage(freeze=["latent_codec"])


def test_train_names_the_tokenizer_decoder_and_the_encoder_stays_bit_identical(tmp_path: Path) -> None:
    vae = CausalVAE(**read_component_meta(PARENT, "tokenizer")["config"])
    stage = TokenizerModule(vae, lr=1e-3, finetune=FineTune(init_from=str(PARENT), train=["tokenizer.decoder"]))
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    torch.manual_seed(0)
    _fit(stage, {"video": torch.rand(1, 3, 5, 32, 32)}, 2, tmp_path)
    after = dict(vae.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("encoder."))
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("decoder."))
    assert not vae.encoder.training and vae.decoder.training
    assert stage._lineage["trained"] == ["tokenizer.decoder"]


def test_a_checkpoint_resumes_only_under_the_finetune_it_was_trained_with(tmp_path: Path) -> None:
    stage = _latent_stage(freeze=["latent_codec.entropy_models"])
    trainer = _fit(stage, _latent_batch(), 1, tmp_path)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    saved = torch.load(tmp_path / "a.ckpt", map_location="cpu", weights_only=False)
    _latent_stage(freeze=["latent_codec.entropy_models"]).on_load_checkpoint(saved)  # the same: fine
    with pytest.raises(FineTuneError, match=r"trained with finetune from .*latent_tiny .*frozen \['latent_codec.entropy_models'\]"):
        _latent_stage().on_load_checkpoint(saved)
    plain = LatentCodecModule(_parent_codec(), lambdas=[0.1 * 2**q for q in range(_parent_codec().num_qualities)], tokenizer_path=str(PARENT))
    with pytest.raises(FineTuneError, match="resume it with the recipe it was started with"):
        plain.on_load_checkpoint(saved)
