"""TextEncoder: any transformers text encoder and its tokenizer, captions in, hidden states out.

``forward(texts)`` gives ``(hidden_BLC, mask_BL)``: float32 ``B x L x C`` last hidden states
and a bool ``B x L`` mask (True on real tokens, False on padding), ``L <= max_length``
(the batch's longest, or ``max_length`` with ``padding="max_length"``, as Stable Diffusion's CLIP).

Built from a LOCAL folder (``pretrained_path``: ``config.json`` + weights + a fast tokenizer's
``tokenizer.json``; ``subfolder`` / ``tokenizer_subfolder`` for a pipeline folder such as
``text_encoder/`` and ``tokenizer/``), loaded offline, never the Hub; or from a transformers
config (what an export holds). ``class_name`` picks the transformers class: ``CLIPTextModel``,
``T5EncoderModel``, ``BertModel``..., by default the folder's ``architectures`` entry.

**Export.** The component config holds the transformers config itself, not the folder, and the
tokenizer travels in the weights: its ``tokenizer.json`` as a uint8 buffer (``tokenizer_json``,
``tokenizer_bytes`` long). So an exported TextEncoder loads from safetensors and JSON alone,
anywhere. Tied weights (T5's ``shared`` and ``encoder.embed_tokens``) are stored once (safetensors
refuses shared memory) and tied again on load. Tokenization uses the ``tokenizers`` library on
that JSON directly (its own special-token template), truncating to ``max_length``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gvc_train.models.registry import register_component

_PADDING = ("longest", "max_length")


def _transformers_model_class(class_name: str) -> type[nn.Module]:
    # A transformers PreTrainedModel class by name and nothing else: a name in a component file
    # can never reach an arbitrary import.
    import transformers

    cls = getattr(transformers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel) and class_name.endswith("Model")):
        raise ValueError(f"{class_name!r} is not a transformers model class (e.g. CLIPTextModel, T5EncoderModel, BertModel)")
    return cls


def _plain_config(model: nn.Module) -> dict[str, Any]:
    """The transformers config as plain JSON, without what names a folder or a version."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    for key in ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"):
        config.pop(key, None)
    return config


def _pretrained(folder: Path, subfolder: str | None, tokenizer_subfolder: str | None, class_name: str | None) -> tuple[nn.Module, str, Any]:
    """(model, its class name, the tokenizer) from a local folder, offline."""
    model_dir = folder / (subfolder or "")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no transformers text encoder at {model_dir} (config.json missing); give a local folder")
    os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it: never the network
    from transformers import AutoTokenizer

    if class_name is None:
        architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or ["AutoModel"]
        class_name = architectures[0]
    local = dict(local_files_only=True, subfolder=subfolder or "")
    if class_name == "AutoModel":
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(folder), dtype=torch.float32, **local)
        class_name = type(model).__name__
    else:
        model = _transformers_model_class(class_name).from_pretrained(str(folder), dtype=torch.float32, **local)
    tokenizer_sub = tokenizer_subfolder if tokenizer_subfolder is not None else subfolder
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, subfolder=tokenizer_sub or "")
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError(f"the tokenizer at {folder / (tokenizer_sub or '')} is not a fast tokenizer (no tokenizer.json)")
    # from_pretrained returns eval mode; a module starts in train mode and its owner decides.
    return model.train(), class_name, tokenizer


@register_component("TextEncoder")
class TextEncoder(nn.Module):
    """A transformers text encoder with its tokenizer (module docstring); exactly one of
    ``config`` (with ``class_name`` and the tokenizer's ``tokenizer_json`` or ``tokenizer_bytes``)
    or ``pretrained_path``."""

    # An exported config holds the transformers config and the tokenizer's size, never a path.
    config_bounds = {
        "pretrained_path": {None}, "subfolder": {None}, "tokenizer_subfolder": {None}, "tokenizer_text": {None},
        "padding": set(_PADDING), "max_length": (1, 1 << 16), "tokenizer_bytes": (0, 64 << 20), "pad_token_id": (0, 1 << 24),
        "config.vocab_size": (1, 1 << 24), "config.bos_token_id": (0, 1 << 24), "config.eos_token_id": (0, 1 << 24),
        "config.pad_token_id": (0, 1 << 24), "config.decoder_start_token_id": (0, 1 << 24),
    }  # fmt: skip

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        pretrained_path: str | None = None,
        class_name: str | None = None,
        subfolder: str | None = None,
        tokenizer_subfolder: str | None = None,
        tokenizer_text: str | None = None,
        tokenizer_bytes: int = 0,
        pad_token_id: int = 0,
        max_length: int = 77,
        padding: str = "longest",
    ) -> None:
        super().__init__()
        if (config is None) == (pretrained_path is None):
            raise ValueError("TextEncoder needs exactly one of config (a transformers config dict) or pretrained_path")
        if padding not in _PADDING:
            raise ValueError(f"padding must be one of {_PADDING}, got {padding!r}")
        self.max_length, self.padding = int(max_length), padding
        if pretrained_path is not None:
            self.model, class_name, tokenizer = _pretrained(Path(pretrained_path), subfolder, tokenizer_subfolder, class_name)
            tokenizer_text = tokenizer.backend_tokenizer.to_str()
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            pad_token_id = int(pad or 0)
        else:
            if class_name is None:
                raise ValueError("TextEncoder from a config needs class_name (e.g. CLIPTextModel)")
            from transformers import AutoConfig

            plain = dict(config)
            model_config = AutoConfig.for_model(plain.pop("model_type"), **plain)
            self.model = _transformers_model_class(class_name)(model_config)
        self.class_name = class_name
        self.pad_token_id = int(pad_token_id)
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions is not None and self.max_length > positions:
            raise ValueError(f"max_length {self.max_length} exceeds the model's {positions} positions")
        data = tokenizer_text.encode("utf-8") if tokenizer_text is not None else b""
        size = len(data) if tokenizer_text is not None else int(tokenizer_bytes)
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone() if data else torch.zeros(size, dtype=torch.uint8)
        self.register_buffer("tokenizer_json", buffer)
        self._tokenizer: Any = None
        self._tied = self._tied_names()
        self.register_state_dict_post_hook(TextEncoder._untie_in_state)
        self.register_load_state_dict_pre_hook(TextEncoder._tie_in_state)
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_tokenizer", None))

    # register_component records the constructor arguments in ``config`` after __init__; this
    # property rewrites them into what rebuilds the module anywhere: the transformers config,
    # the resolved class, the tokenizer's size (its bytes are in the weights), no path.
    @property
    def config(self) -> dict[str, Any]:
        return self._export_config

    @config.setter
    def config(self, value: dict[str, Any]) -> None:
        exported = dict(value)
        exported.update(
            config=_plain_config(self.model), pretrained_path=None, subfolder=None, tokenizer_subfolder=None,
            tokenizer_text=None, class_name=self.class_name, tokenizer_bytes=int(self.tokenizer_json.numel()),
            pad_token_id=self.pad_token_id,
        )  # fmt: skip
        self._export_config = exported

    # ---- tied weights: stored once, tied again on load ---------------------------------------

    def _tied_names(self) -> dict[str, str]:
        """``{duplicate name: first name}`` of the wrapped model's tied parameters (by identity:
        right on the meta device too)."""
        first: dict[int, str] = {}
        tied = {}
        for name, param in self.model.named_parameters(remove_duplicate=False):
            if id(param) in first:
                tied[f"model.{name}"] = first[id(param)]
            else:
                first[id(param)] = f"model.{name}"
        return tied

    @staticmethod
    def _untie_in_state(module: TextEncoder, state: dict[str, Any], prefix: str, metadata: Any) -> None:
        for duplicate in module._tied:
            state.pop(prefix + duplicate, None)

    @staticmethod
    def _tie_in_state(module: TextEncoder, state: dict[str, Any], prefix: str, *args: Any) -> None:
        for duplicate, source in module._tied.items():
            if prefix + duplicate not in state and prefix + source in state:
                state[prefix + duplicate] = state[prefix + source]

    # ---- encoding -------------------------------------------------------------------------------

    def tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` from the bytes in ``tokenizer_json`` (rebuilt after a load)."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            try:
                tokenizer = Tokenizer.from_str(bytes(self.tokenizer_json.cpu().numpy()).decode("utf-8"))
            except (UnicodeDecodeError, Exception) as e:  # noqa: BLE001 - tokenizers raises its own exception type
                raise ValueError(f"TextEncoder: its tokenizer_json is not a tokenizer ({str(e)[:100]})") from None
            tokenizer.enable_truncation(self.max_length)
            length = self.max_length if self.padding == "max_length" else None
            tokenizer.enable_padding(pad_id=self.pad_token_id, length=length)
            self._tokenizer = tokenizer
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids_BL int64, mask_BL bool)`` on the model's device."""
        if isinstance(texts, str) or not texts:
            raise ValueError("TextEncoder takes a non-empty list of texts")
        encodings = self.tokenizer().encode_batch(list(texts))
        device = self.tokenizer_json.device
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long, device=device)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool, device=device)
        return ids, mask

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden_BLC, mask_BL)`` of ``texts`` (module docstring)."""
        ids_BL, mask_BL = self.tokenize(texts)
        hidden_BLC = self.model(input_ids=ids_BL, attention_mask=mask_BL.long()).last_hidden_state
        return hidden_BLC, mask_BL
