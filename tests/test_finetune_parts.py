"""Fine-tuning's named parts reach every trainable module of a stage: a stage's own part (the
tokenizer stage's discriminator), a part that ``train`` names inside a LoRA-adapted component,
and a component left with nothing to train is refused at start-up in one line."""

from __future__ import annotations

import pytest

from gvc_train.components import read_component_meta
from gvc_train.lit.finetune import FineTune, FineTuneError
from gvc_train.lit.lora import LoraSpec
from gvc_train.lit.progressive_context import ProgressiveContextModule
from gvc_train.lit.tokenizer import TokenizerModule
from gvc_train.models import CausalVAE
from gvc_train.models.losses.discriminator import PatchDiscriminator3D
from gvc_train.models.progressive.context_model import ProgressiveContextModel

from conftest import REPO

LATENT = REPO / "checkpoints" / "latent_tiny"
PROGRESSIVE = REPO / "checkpoints" / "progressive_tiny"


def _tokenizer_stage(**finetune) -> TokenizerModule:
    vae = CausalVAE(**read_component_meta(LATENT, "tokenizer")["config"])
    return TokenizerModule(vae, discriminator=PatchDiscriminator3D(), lr=1e-3, finetune=FineTune(init_from=str(LATENT), **finetune))


def test_the_discriminator_part_is_frozen_or_trained_as_the_recipe_says() -> None:
    # freeze: [discriminator] used to be accepted and the discriminator trained anyway
    with pytest.raises(ValueError, match="leaves the discriminator nothing to train"):
        _tokenizer_stage(freeze=["discriminator"])
    with pytest.raises(ValueError, match="leaves the discriminator nothing to train"):
        _tokenizer_stage(train=["tokenizer.decoder"])  # train lists what trains: all else is frozen
    stage = _tokenizer_stage(train=["tokenizer.decoder", "discriminator"])
    assert all(p.requires_grad for p in stage.discriminator.parameters())
    assert not any(p.requires_grad for p in stage.vae.encoder.parameters())
    with pytest.raises(FineTuneError, match="tokenizer would have nothing to train"):
        _tokenizer_stage(train=["discriminator"])  # else AdamW([]) fails in configure_optimizers


def _context_stage(**finetune) -> ProgressiveContextModule:
    model = ProgressiveContextModel(**read_component_meta(PROGRESSIVE, "context_model")["config"])
    ft = FineTune(init_from=str(PROGRESSIVE), lora=LoraSpec(component="context_model", r=2, alpha=4, targets=["qkv"]), **finetune)
    return ProgressiveContextModule(model, quantizer_path=str(PROGRESSIVE), finetune=ft)


def test_a_part_that_train_names_inside_the_lora_component_keeps_training() -> None:
    pytest.importorskip("peft")
    trains = {n for n, p in _context_stage(train=["context_model.head"]).context_model.named_parameters() if p.requires_grad}
    assert any(".lora_A." in n for n in trains)
    assert any(n.startswith("head.") for n in trains)  # the docstring's "and any part train names"
    assert not any(n.startswith("input_proj.") for n in trains)
    plain = {n for n, p in _context_stage().context_model.named_parameters() if p.requires_grad}
    assert plain and all("lora_" in n for n in plain)  # without train: the adapters only


def test_gvc_info_shows_the_lora_record_a_fine_tune_writes() -> None:
    # the stage writes one flat adapter record; gvc info read it as {attribute: record} and printed "r r=? alpha=? ?; ..."
    pytest.importorskip("peft")
    from gvc_train.codecs.lineage import lineage_rows

    lineage = _context_stage()._lineage
    fine_tune = lineage_rows({"provenance": {"lineage": lineage}})[2]
    assert fine_tune.endswith("lora context_model r=2 alpha=4 [qkv]"), fine_tune


def test_a_lora_fine_tune_without_peft_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # gvc-train prints ValueErrors as one line; a bare ImportError was a traceback
    import sys

    from torch import nn

    from gvc_train.lit.lora import inject_lora

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(ValueError, match="needs the peft package"):
        inject_lora(nn.Sequential(nn.Linear(4, 4)), LoraSpec(component="m", r=1, alpha=1, targets=["0"]))
