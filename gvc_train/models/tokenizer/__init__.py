"""The video tokenizers: a causal 3-D VAE (CausalVAE) and a wrapper of diffusers video VAEs."""
