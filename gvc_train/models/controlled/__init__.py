"""The controlled-generation family's model side: what conditions the control-conditioned video
diffusion model (the caption's text encoder so far)."""
