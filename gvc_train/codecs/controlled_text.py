"""The controlled-generation family's text variant: the same codec with a text encoder in the
folder, so a caption is among the controls it can send (through the transformer's text
cross-attention). Its own family name, so that a folder says which components it holds."""

from __future__ import annotations

from gvc_train.codecs.controlled import ControlledCodec


class ControlledTextCodec(ControlledCodec):
    """A controlled codec whose folder holds a ``text_encoder`` (module docstring)."""

    family = "controlled_text"
