"""A stage with an EMA copy of its model refuses FSDP in one line (lit/ema_strategy.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

from gvc_train.lit.ema_strategy import refuse_sharded_ema


def test_fsdp_is_refused_in_one_line_and_ddp_is_not() -> None:
    with pytest.raises(ValueError, match=r"^the controlled diffusion stage keeps an EMA .* not FSDP$") as info:
        refuse_sharded_ema(SimpleNamespace(strategy=FSDPStrategy()), "the controlled diffusion stage")
    assert "\n" not in str(info.value)
    for strategy in (DDPStrategy(), SingleDeviceStrategy("cpu")):
        refuse_sharded_ema(SimpleNamespace(strategy=strategy), "the controlled diffusion stage")
