"""The controlled-generation family's model side: what conditions the control-conditioned video
diffusion model (the caption's text encoder) and the model itself, the rectified-flow video
transformer (transformer.py; its blocks, embeddings and control encoder beside it;
control_maps.py turns each control's layout into the map its encoder takes). The flow-matching
convention, modality dropout and sampling it is used with live in models/flow/."""
