"""The Scale-Space Flow peer: compressai's learned pixel-domain video codec at configurable widths."""
