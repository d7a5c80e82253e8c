"""``gvc-zeroshot``: make a zero-shot codec folder from a pretrained generator (no training).

Two sources of a generator:

* ``--model DIR``: an exported controlled codec folder (``controlled`` or ``controlled_text``):
  its tokenizer, keyframe latent codec, transformer, coding settings (and text encoder) are
  copied file by file, fingerprints unchanged; the defaults follow the model (GOP = its longest
  clip, its sampler's shift, its keyframe quality).
* ``--wan DIR --keyframes DIR``: a diffusers Wan 2.1 pipeline in a local folder (referenced by
  path and identity, not copied) and a latent codec folder of the project that codes the frames
  the modes send as images.

``--set KEY=JSON`` overrides a :class:`~gvc_train.models.codebook.settings.ZeroShotSettings`
default (``--set codebook_size=1024 --set 'atoms=[1,2,4,8]'``). The folder is written beside
``--out`` and moved into place when whole.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from gvc_train.cli_parser import OneLineArgumentParser
from gvc_train.codecs.codec_folder import CodecFolderError, read_codec_json, write_codec_json
from gvc_train.components import ComponentError, load_component, read_component_meta, save_component
from gvc_train.safe_output import OutputError, atomic_output, raise_on_sigterm

SETTINGS = "zeroshot"  # the settings component every zero-shot folder adds


def _family_with(components: set[str]) -> str | None:
    """The family whose folders hold exactly ``components`` (the table says which; none named here)."""
    from gvc_train.codecs.families import FAMILIES

    return next((e.name for e in FAMILIES.values() if set(e.components) == components), None)


def _copy_component(source: Path, out: Path, name: str) -> None:
    meta = read_component_meta(source, name)
    shutil.copyfile(source / f"{name}.json", out / f"{name}.json")
    shutil.copyfile(source / meta["weights"], out / meta["weights"])


def make_zeroshot_codec(
    out: str | Path, *, model: str | Path | None = None, wan: str | Path | None = None, keyframes: str | Path | None = None,
    settings: dict[str, Any] | None = None, wan_guidance_scale: float = 5.0, negative_prompt: str = "",
    wan_dtype: str = "float32", wan_device: str = "auto",
) -> Path:  # fmt: skip
    """Write a zero-shot codec folder into ``out`` (an existing empty folder); return codec.json's path."""
    from gvc_train.codecs.families import FAMILIES
    from gvc_train.models.codebook.settings import ZeroShotSettings
    from gvc_train.models.codebook.wan_reference import WanPipelineReference

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (model is None) == (wan is None):
        raise ValueError("give --model (a controlled codec folder) or --wan (a diffusers Wan pipeline folder), one of them")
    defaults: dict[str, Any] = {}
    if model is not None:
        source = Path(model)
        meta = read_codec_json(source)
        names = set(FAMILIES[meta["family"]].components)
        family = _family_with(names | {SETTINGS}) if "transformer" in names else None
        if family is None:
            raise CodecFolderError(f"{source} is a {meta['family']!r} codec; --model takes a controlled codec folder (a transformer with its tokenizer)")
        for name in sorted(names):
            _copy_component(source, out, name)
        coding = load_component(source, "coding")
        stride = load_component(source, "tokenizer").temporal_stride
        defaults = {"gop_frames": 1 + stride * (coding.clip_latent_frames - 1), "shift": coding.shift, "keyframe_quality": coding.keyframe_quality}
        lineage = {"made_from": str(source), "source_fingerprint": meta["fingerprint"]}
    else:
        from gvc_train.models.codebook.wan_generator import pipeline_identity

        if keyframes is None:
            raise ValueError("--wan needs --keyframes: a latent codec folder of the project for the frames sent as images")
        source = Path(keyframes)
        meta = read_codec_json(source)
        for name in ("tokenizer", "latent_codec"):
            if name not in meta["components"]:
                raise CodecFolderError(f"{source} has no {name}; --keyframes takes a latent codec folder")
            _copy_component(source, out, name)
        family = _family_with({"tokenizer", "latent_codec", "pipeline", SETTINGS})
        assert family is not None
        path = Path(wan).resolve()
        reference = WanPipelineReference(str(path), pipeline_identity(path), wan_guidance_scale, negative_prompt, wan_dtype, wan_device)
        save_component(reference, out, "pipeline")
        lineage = {"made_from": str(path), "keyframes_from": str(source), "keyframes_fingerprint": meta["fingerprint"]}
    save_component(ZeroShotSettings(**{**defaults, **(settings or {})}), out, SETTINGS)
    modules = {name: load_component(out, name) for name in FAMILIES[family].components}
    codec_class = FAMILIES[family].codec_class()
    codec_class.check_components(modules, str(out))
    return write_codec_json(out, family, codec_class.export_extras(modules), lineage)


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes KEY=VALUE (VALUE as JSON), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare word: a string (--set mode=flf2v)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="gvc-zeroshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the codec folder to write: new or empty")
    parser.add_argument("--model", help="an exported controlled codec folder (its generator)")
    parser.add_argument("--wan", help="a diffusers Wan 2.1 pipeline folder (local; not copied)")
    parser.add_argument("--keyframes", help="with --wan: a latent codec folder that codes the frames sent as images")
    parser.add_argument("--wan-guidance-scale", type=float, default=5.0, help="with --wan: classifier-free guidance (1: one call a step)")
    parser.add_argument("--wan-dtype", default="float32", choices=["float32", "bfloat16"], help="with --wan: the transformer's and text encoder's dtype")
    parser.add_argument("--wan-device", default="auto", choices=["auto", "cpu", "cuda"], help="with --wan: where the pipeline runs (auto: cuda where there is one)")
    parser.add_argument("--negative-prompt", default="", help="with --wan: the negative prompt of classifier-free guidance")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override a ZeroShotSettings default (repeatable)")
    args = parser.parse_args(argv)
    raise_on_sigterm()
    try:
        settings = dict(_setting(s) for s in args.set)
        inputs = [p for p in (args.model, args.wan, args.keyframes) if p]
        with atomic_output(Path(args.out), inputs=inputs, folder=True) as tmp:
            path = make_zeroshot_codec(
                tmp, model=args.model, wan=args.wan, keyframes=args.keyframes, settings=settings,
                wan_guidance_scale=args.wan_guidance_scale, negative_prompt=args.negative_prompt, wan_dtype=args.wan_dtype, wan_device=args.wan_device,
            )  # fmt: skip
            family = json.loads(path.read_text())["family"]
    except (ValueError, TypeError, ComponentError, OutputError) as e:
        print(f"gvc-zeroshot: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote a {family} codec: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
