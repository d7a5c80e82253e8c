"""One tiny case per registered component, for the component tester (component_tester.py).

Every name in ``gvc_train.models.BUILTIN_COMPONENTS`` needs at least one case here (a test in
test_component_contract.py fails otherwise): a new component adds one ``ComponentCase`` to
``CASES`` and gets export/reload, fingerprint, registry, import and training-step checks.

gvc_train is imported inside the functions only: the tester's child process imports this file
before it checks what importing each component's module brings in.
"""

from __future__ import annotations

from typing import Any

import torch
from component_tester import ComponentCase
from torch import nn

# A tiny diffusers AutoencoderKLWan (also what conftest's wan_pretrained_dir saves).
TINY_WAN_CONFIG = dict(
    base_dim=8,
    z_dim=4,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],  # (sic) diffusers' spelling
    latents_mean=[0.0] * 4,
    latents_std=[1.0] * 4,
)
TINY_CAUSAL_VAE = dict(base_channels=8, num_res_blocks=1, latent_channels=4)
TINY_LATENT_CODEC = dict(latent_channels=4, channels=8, y_channels=4, z_channels=4, memory_channels=4, num_res_blocks=1, num_qualities=3)
TINY_DISCRIMINATOR = dict(base_channels=8, num_layers=2, temporal_downsample=1)


def _video() -> dict[str, Any]:
    """A 5-frame 16 x 16 clip in [0, 1]: 1 + 4 frames, two latent frames for a stride-4 tokenizer."""
    return {"x_BCThw": torch.rand(1, 3, 5, 16, 16)}


def _tokenizer_loss(module: nn.Module, inputs: dict[str, Any], out: Any) -> torch.Tensor:
    recon, posterior = out
    return (recon - inputs["x_BCThw"]).abs().mean() + 1e-6 * posterior.kl().mean()


def _causal_vae() -> nn.Module:
    from gvc_train.models import CausalVAE

    return CausalVAE(**TINY_CAUSAL_VAE)


def _diffusers_vae() -> nn.Module:
    from gvc_train.models import DiffusersVAE

    return DiffusersVAE(config=TINY_WAN_CONFIG)


def _latent_codec() -> nn.Module:
    from gvc_train.models import LatentVideoCodec

    return LatentVideoCodec(**TINY_LATENT_CODEC)


def _latents() -> dict[str, Any]:
    """Two latent frames (the second is coded with the first as context) at quality 1."""
    return {"latent_BCthw": torch.randn(1, 4, 2, 4, 6), "quality": 1}


def _rate_distortion_loss(module: nn.Module, inputs: dict[str, Any], out: Any) -> torch.Tensor:
    latent = inputs["latent_BCthw"]
    rate = module.rate_bits(out["likelihoods"]) / latent.numel()
    return rate + 20.0 * (out["recon"] - latent).square().mean() + module.aux_loss()


TINY_SSF = dict(mid_planes=8, planes=8, hyper_planes=8, num_levels=3)


def _ssf(num_qualities: int) -> nn.Module:
    from gvc_train.models import ScaleSpaceFlowCodec

    return ScaleSpaceFlowCodec(**TINY_SSF, num_qualities=num_qualities)


def _ssf_gop() -> dict[str, Any]:
    """A keyframe and an inter frame of 128 x 128 (the codec's frame multiple), at quality 0."""
    return {"video_BCThw": torch.rand(1, 3, 2, 128, 128), "quality": 0}


def _ssf_loss(module: nn.Module, inputs: dict[str, Any], out: Any) -> torch.Tensor:
    video = inputs["video_BCThw"]
    bpp = out["bits"].sum() / (video.shape[2] * video.shape[3] * video.shape[4])
    return bpp + 0.01 * 255**2 * (out["x_hat"] - video).square().mean() + module.aux_loss()


def _discriminator(norm: str) -> nn.Module:
    from gvc_train.models import PatchDiscriminator3D

    return PatchDiscriminator3D(**TINY_DISCRIMINATOR, norm=norm)


def _hinge_on_real(module: nn.Module, inputs: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
    return torch.relu(1.0 - logits).mean()


TINY_CONTEXT_MODEL = dict(num_scales=3, code_dim=4, codebook_size=8, width=16, depth=1, heads=2, mlp_ratio=2.0, pos_grid=2, context_grid=2, past_frames=1)


def _context_model(kind: str) -> nn.Module:
    from gvc_train.models import ProgressiveContextModel

    return ProgressiveContextModel(**TINY_CONTEXT_MODEL, kind=kind)


def _token_pyramid(kind: str) -> dict[str, Any]:
    """Next-scale inputs of a 3-scale pyramid (1x1, 2x2, 3x3), the previous frame's partial reconstructions and the true tokens."""
    scales = [(1, 1), (2, 2), (3, 3)]
    inputs = [torch.zeros(2, 4, 1, 1)] + [torch.randn(2, 4, h, w) for h, w in scales[1:]]
    tokens = [torch.randint(0, 8, (2, h, w)) if kind == "codebook" else torch.randint(0, 2, (2, 4, h, w)) for h, w in scales]
    past = [torch.randn(2, 4, 3, 3) for _ in scales]  # the previous frame's partial reconstructions, per scale
    return {"inputs_per_scale": inputs, "past": past, "tokens": tokens}


def _token_rate(module: nn.Module, inputs: dict[str, Any], logits: list[torch.Tensor]) -> torch.Tensor:
    return module.rate_bits(logits, inputs["tokens"]).mean()


TINY_QUANTIZER = dict(latent_channels=4, code_dim=4, codebook_size=16, scales=[0.25, 0.5, 1.0], refine_groups=2)


def _quantizer(kind: str) -> nn.Module:
    from gvc_train.models import MultiScaleQuantizer

    return MultiScaleQuantizer(**TINY_QUANTIZER, kind=kind)


def _latent_frames() -> dict[str, Any]:
    """Two latent frames (B x C x t x h x w, t folded into the batch by the quantizer)."""
    return {"z": torch.randn(1, 4, 2, 8, 8)}


def _quantizer_loss(module: nn.Module, inputs: dict[str, Any], out: Any) -> torch.Tensor:
    return (out.reconstruction - inputs["z"]).square().mean() + out.loss


# A tiny CLIP text model (TextEncoder from a config, as an export rebuilds it) and its tokenizer.
TINY_CLIP_TEXT = dict(
    model_type="clip_text_model", vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    num_attention_heads=2, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip


def _text_encoder() -> nn.Module:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from gvc_train.models import TextEncoder

    words = ["<pad>", "<s>", "</s>", "<unk>", "a", "man", "in", "car", "people", "on", "bikes", "road"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return TextEncoder(config=TINY_CLIP_TEXT, class_name="CLIPTextModel", tokenizer_text=tokenizer.to_str(), max_length=16)


def _texts() -> dict[str, Any]:
    return {"texts": ["a man in a car", "people on bikes"]}


def _hidden_loss(module: nn.Module, inputs: dict[str, Any], out: Any) -> torch.Tensor:
    hidden_BLC, mask_BL = out
    return hidden_BLC[mask_BL].square().mean()



# A tiny ControlledVideoTransformer: 4-channel latent of 2 frames, two 1-channel controls at twice
# the latent's size over 1 + (2 - 1) * 4 = 5 frames, 8-wide text.
TINY_CONTROLLED_TRANSFORMER = dict(
    latent_channels=4, patch_size=[1, 2, 2], width=16, depth=2, heads=2, mlp_ratio=2.0, text_dim=8,
    controls={"luma": 1, "flow": 2}, control_depth=1, control_hidden=4, control_frames_per_latent=4,
    control_scale=2, max_latent_frames=4,
)  # fmt: skip


def _controlled_transformer() -> nn.Module:
    from gvc_train.models import ControlledVideoTransformer

    return ControlledVideoTransformer(**TINY_CONTROLLED_TRANSFORMER)


# The same conditions through a tiny random diffusers Wan transformer (8-wide text, 2 blocks).
TINY_WAN_TRANSFORMER_CONFIG = dict(
    patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=8,
    freq_dim=16, ffn_dim=16, num_layers=2, rope_max_seq_len=32,
)  # fmt: skip


def _diffusers_controlled_transformer() -> nn.Module:
    from gvc_train.models import DiffusersControlledTransformer

    extras = {k: v for k, v in TINY_CONTROLLED_TRANSFORMER.items() if k.startswith("control") or k == "max_latent_frames"}
    return DiffusersControlledTransformer(config=TINY_WAN_TRANSFORMER_CONFIG, **extras)


def _noisy_latent_and_conditions() -> dict[str, Any]:
    key_mask = torch.zeros(2, 1, 2, 4, 4)
    key_mask[:, :, 0] = 1
    return {
        "x_BCThw": torch.randn(2, 4, 2, 4, 4), "t_B": torch.rand(2),
        "key_BCThw": torch.randn(2, 4, 2, 4, 4) * key_mask, "key_mask_B1Thw": key_mask,
        "key_roles_BT": torch.tensor([[1, 0], [3, 0]]),
        "controls": {"luma": torch.rand(2, 1, 5, 8, 8), "flow": torch.randn(2, 2, 5, 8, 8)},
        "text_BLE": torch.randn(2, 3, 8), "text_mask_BL": torch.tensor([[True, True, True], [True, False, False]]),
        "dropped": {"flow": torch.tensor([False, True])},
    }  # fmt: skip


def _velocity_loss(module: nn.Module, inputs: dict[str, Any], v: Any) -> torch.Tensor:
    return (v - inputs["x_BCThw"]).square().mean()


def _as_if_trained(module: nn.Module) -> None:
    # A fresh model predicts exactly zero (adaLN-Zero, zero final layer, zero control hints):
    # small random values there make the export round trip compare non-trivial outputs.
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(0.1 * torch.randn_like(param))

def _coding_settings() -> nn.Module:
    from gvc_train.models import ControlledCodingSettings

    return ControlledCodingSettings(latent_scale=0.5, keyframes={"name": "adaptive", "max_interval": 16}, end_role="adaptive", controls=["luma"])


def _settings_as_tensor(module: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    return torch.tensor([module.latent_scale, module.clip_latent_frames, module.num_steps, module.shift, module.seed], dtype=torch.float64)


def _another_seed(module: nn.Module) -> nn.Module:
    return type(module)(**{**module.config, "seed": module.seed + 1})


def _zeroshot_settings() -> nn.Module:
    from gvc_train.models import ZeroShotSettings

    return ZeroShotSettings(codebook_size=1024, atoms=[1, 4, 16], gop_frames=17, shift=1.0)


def _zeroshot_as_tensor(module: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    return torch.tensor([module.codebook_size, *module.atoms, module.num_steps, module.ode_tail, module.shift, module.seed], dtype=torch.float64)


def _wan_reference() -> nn.Module:
    from gvc_train.models import WanPipelineReference

    return WanPipelineReference(path="/models/Wan2.1-T2V-1.3B-Diffusers", identity="ab" * 32, guidance_scale=5.0)


def _reference_as_tensor(module: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    return torch.tensor([len(module.path), module.guidance_scale, int(module.identity[:8], 16)], dtype=torch.float64)


def _another_path(module: nn.Module) -> nn.Module:
    return type(module)(**{**module.config, "path": module.path + "-other"})


CASES = [
    ComponentCase(
        "ZeroShotSettings", make=_zeroshot_settings, inputs=dict, loss=lambda *_: torch.zeros(()),
        forward=_zeroshot_as_tensor, config_only=True, change=_another_seed,
    ),  # fmt: skip
    ComponentCase(
        "WanPipelineReference", make=_wan_reference, inputs=dict, loss=lambda *_: torch.zeros(()),
        forward=_reference_as_tensor, config_only=True, change=_another_path,
    ),  # fmt: skip
    ComponentCase(
        "ControlledCodingSettings", make=_coding_settings, inputs=dict, loss=lambda *_: torch.zeros(()),
        forward=_settings_as_tensor, config_only=True, change=_another_seed,
    ),  # fmt: skip
    ComponentCase("CausalVAE", make=_causal_vae, inputs=_video, loss=_tokenizer_loss),
    ComponentCase("DiffusersVAE", make=_diffusers_vae, inputs=_video, loss=_tokenizer_loss),
    ComponentCase(
        "ControlledVideoTransformer", make=_controlled_transformer, inputs=_noisy_latent_and_conditions,
        loss=_velocity_loss, ready_for_export=_as_if_trained,
    ),  # fmt: skip
    ComponentCase(
        "DiffusersControlledTransformer", make=_diffusers_controlled_transformer, inputs=_noisy_latent_and_conditions,
        loss=_velocity_loss, ready_for_export=_as_if_trained, module_imports=("diffusers",),
    ),  # fmt: skip
    ComponentCase(
        "LatentVideoCodec", make=_latent_codec, inputs=_latents, loss=_rate_distortion_loss,
        ready_for_export=lambda codec: codec.update(force=True),  # the entropy tables travel with it
        module_imports=("compressai",),
    ),  # fmt: skip
    *(
        ComponentCase(
            "ScaleSpaceFlowCodec", variant=variant, make=lambda q=q: _ssf(q), inputs=_ssf_gop, loss=_ssf_loss,
            ready_for_export=lambda codec: codec.update(force=True), module_imports=("compressai",),
        )  # fmt: skip
        for variant, q in (("gained", 3), ("plain", 1))
    ),
    ComponentCase("PatchDiscriminator3D", variant="group", make=lambda: _discriminator("group"), inputs=_video, loss=_hinge_on_real),
    ComponentCase("PatchDiscriminator3D", variant="spectral", make=lambda: _discriminator("spectral"), inputs=_video, loss=_hinge_on_real),
    *(
        ComponentCase("MultiScaleQuantizer", variant=kind, make=lambda kind=kind: _quantizer(kind), inputs=_latent_frames, loss=_quantizer_loss)
        for kind in ("codebook", "bitwise")
    ),
    *(
        ComponentCase(
            "ProgressiveContextModel", variant=kind, make=lambda kind=kind: _context_model(kind),
            inputs=lambda kind=kind: _token_pyramid(kind), loss=_token_rate,
            forward=lambda module, inputs: module(inputs["inputs_per_scale"], inputs["past"]),
        )  # fmt: skip
        for kind in ("codebook", "bitwise")
    ),
    ComponentCase("TextEncoder", make=_text_encoder, inputs=_texts, loss=_hidden_loss),
]
