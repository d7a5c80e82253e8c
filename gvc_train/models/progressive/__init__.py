"""The progressive token family (ProGVC): multi-scale residual quantizer and its context model."""
