"""A tiny random text encoder folder for CPU recipes: a stand-in until a real one is given.

    python -m gvc_train.models.controlled.tiny_text_encoder --out data/text_encoder_tiny

writes what ``TextEncoder(pretrained_path=...)`` loads (``save_pretrained`` of a transformers
``BertModel`` and of its fast tokenizer): a seeded random BERT (width 32, 2 layers) with a
WordPiece tokenizer over a fixed small English vocabulary (the captions' words, common words, and
every letter as a word start and a continuation, so any lowercase word tokenizes). No pretrained
weights are needed, or exist on a machine without network; the encoder stays frozen in training,
so its features are a fixed random projection of the caption's tokens: enough to exercise the
text pathway, not a language model. Deterministic: the same folder bytes on every run.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

import torch

WIDTH, LAYERS, HEADS, MAX_TOKENS = 32, 2, 2, 64
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = """a an the and or of in on at to by with from into out over under past along while
is are was be has have his her its their this that there it he she they
man woman men women person people child boy girl cyclist rider driver rabbit animal cartoon
car cars van vans taxi taxis bus bike bikes bicycle bicycles phone suit tie bow helmet window
road street sidewalk city traffic building house tree trees rock rocks grass hill hillside sky
water field park back front side landscape burrow sun
talk talks talking ride rides riding walk walks walking run runs drive drives climb climbs
stretch stretches sit sits stand stands pass passes parked moving look looks hold holds
big small fat white black red green blue yellow grey brown sunny grassy busy cobbled old young
left right up down one two many some""".split()


def vocabulary() -> list[str]:
    """Special tokens, whole words, then every letter and digit as a word start and a continuation."""
    pieces = list(string.ascii_lowercase + string.digits + ".,!?'-")
    words = list(dict.fromkeys(WORDS))
    return [*SPECIAL, *words, *[p for p in pieces if p not in words], *[f"##{p}" for p in string.ascii_lowercase + string.digits]]


def build(out: Path, seed: int = 0) -> Path:
    """Write the tiny encoder and its tokenizer to ``out`` (module docstring)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocabulary())}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=2 * WIDTH, max_position_embeddings=MAX_TOKENS, pad_token_id=vocab["[PAD]"],
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(out)  # with its pooler: loading builds one, and every weight must be seeded
    special = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=MAX_TOKENS, **special).save_pretrained(out)
    (out / "README.md").write_text(
        "A random, frozen tiny BERT (gvc_train.models.controlled.tiny_text_encoder): a stand-in text encoder for\n"
        "the CPU recipes until a real one (a local T5 or CLIP folder) is given by path. Not a language model.\n"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write (created; files in it replaced)")
    parser.add_argument("--seed", type=int, default=0, help="the random weights' seed")
    args = parser.parse_args(argv)
    build(args.out, args.seed)
    print(f"wrote a tiny random text encoder to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
