"""Control coders: a control (gvc_train.controls.registry.LAYOUTS) to counted bytes and back.

One coder per control name (:mod:`gvc_train.coding.controls.registry`), each with
``encode(control) -> bytes`` and ``decode(data) -> control``; a damaged payload is a
``BitstreamError`` in one line, never another exception.
"""
