"""Rectified-flow pieces shared by the diffusion and zero-shot families, model-agnostic.

They work on any velocity callable ``velocity(x_BCThw, t_B, **conditions) -> v_BCThw``:

- :mod:`.matching`: the convention (``x_t = (1 - t) x0 + t noise``, velocity ``noise - x0``),
  training-time sampling and the flow-matching loss, drawn through keyed noise;
- :mod:`.modality_dropout`: which conditions a training sample drops (per modality, and all at
  once for classifier-free guidance);
- :mod:`.sampler`: Euler sampling with diffusers' ``FlowMatchEulerDiscreteScheduler`` and
  classifier-free guidance.
"""
