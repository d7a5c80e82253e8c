"""The latent codec family (GLVC-style): a conditional hyperprior codec on tokenizer latents."""
