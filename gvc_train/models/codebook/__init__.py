"""Zero-shot codebook coding (the GVC family's models): no training, a pretrained generator steered.

- :mod:`.noise_codebook`: seeded Gaussian codebooks drawn atom by atom (counter-based), choosing
  and combining atoms;
- :mod:`.sde`: the rectified-flow sampler as an SDE whose noise the caller picks;
- :mod:`.trajectory`: one coded trajectory, the same code for encoder and decoder;
- :mod:`.generator`: the interface a pretrained video model offers the codec, with the project's
  controlled transformer (:mod:`.controlled_generator`) and diffusers Wan pipelines
  (:mod:`.wan_generator`) behind it.
"""
