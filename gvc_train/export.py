"""``gvc-export``: training checkpoint -> exported component folder(s).

    gvc-export runs/tokenizer_tiny/checkpoints/last.ckpt --out exports/tokenizer_tiny

For each component the checkpoint names (see ``lit/checkpoint_meta.py``), writes
``NAME.json`` (class, constructor config, provenance, weights fingerprint) beside
``NAME.safetensors``. Entropy models (compressai ``CompressionModel``s) get ``update(force=True)``
first, so their CDF tables travel in the safetensors. A component fine-tuned with LoRA (its entry
has ``lora``) gets its adapters merged into plain weights first (``lora_merge``; no peft needed),
so the folder holds no ``lora_`` key. When the components make a whole codec (those a family of
``codecs/families.py`` names), ``codec.json`` is written too: the folder is then what ``gvc
encode``/``gvc decode`` take. The result loads with :func:`gvc_train.components.load_component`,
which needs neither Lightning nor pickle. The training checkpoint is read without unpickling
code (``gvc_train.safe_load``: torch's weights-only unpickler; gvc_train's checkpoints hold only
tensors and plain values): a file holding any other pickled type is refused with one line,
before any of it is built.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

# compressai scripts a function with torch.jit at import; the deprecation notice is not the user's concern.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from gvc_train.codecs.codec_folder import write_codec_json
from gvc_train.codecs.families import FAMILIES
from gvc_train.components import ComponentError, build_and_load, save_component
from gvc_train.lit.checkpoint_meta import CHECKPOINT_KEY
from gvc_train.lora_merge import LoraMergeError, merge_lora
from gvc_train.safe_load import NotTorchFile, UnsafeFile, load_torch_file
from gvc_train.cli_parser import OneLineArgumentParser
from gvc_train.safe_output import OutputError, atomic_output, raise_on_sigterm


class ExportError(RuntimeError):
    pass


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no checkpoint at {path}")
    try:
        ckpt = load_torch_file(path, map_location="cpu")
    except (UnsafeFile, NotTorchFile) as e:
        raise ExportError(str(e)) from None
    except Exception as e:  # torch raises many types for a damaged file
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExportError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ExportError(f"{path} is not a Lightning training checkpoint (no state_dict)")
    if CHECKPOINT_KEY not in ckpt:
        raise ExportError(f"{path} was not written by a gvc_train stage (no '{CHECKPOINT_KEY}' entry)")
    return ckpt


def export_checkpoint(
    ckpt_path: str | Path, out_dir: str | Path, names: list[str] | None = None
) -> dict[str, Path]:
    """Export the named components (all by default); return name -> JSON path."""
    ckpt = read_training_checkpoint(ckpt_path)
    meta = ckpt[CHECKPOINT_KEY]
    components: dict[str, Any] = meta["components"]
    wanted = names or list(components)
    unknown = [n for n in wanted if n not in components]
    if unknown:
        raise ExportError(f"{ckpt_path} has no component {unknown}; it has {sorted(components)}")
    provenance = dict(meta.get("provenance", {}))
    provenance["checkpoint"] = str(ckpt_path)
    written: dict[str, Path] = {}
    modules: dict[str, Any] = {}
    for name in wanted:
        spec = components[name]
        prefix = spec["state_prefix"]
        state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        if spec.get("lora"):
            # plain weights, so that the strict load below proves no adapter key was left over
            try:
                state = merge_lora(state, spec["lora"])
            except LoraMergeError as e:
                raise ExportError(f"component {name}: {e}") from None
        module = build_and_load(spec["class"], spec["config"], state, f"component {name}")
        if callable(getattr(module, "update", None)) and hasattr(module, "aux_loss"):
            module.update(force=True)  # compressai life cycle: tables before coding
        # a frozen part reused from another export keeps the provenance of its own training
        own = {**spec["provenance"], "reused_by": provenance} if spec.get("provenance") else provenance
        written[name] = save_component(module, out_dir, name, provenance=own)
        modules[name] = module
    # The components make a whole codec of a family: the most specific one (a controlled_text
    # export also holds a whole controlled codec's components, and a latent codec's).
    whole = [entry for entry in FAMILIES.values() if set(entry.components) <= set(written)]
    for entry in sorted(whole, key=lambda e: len(e.components))[-1:]:
        family = entry.codec_class()
        try:
            family.check_components(modules, str(ckpt_path))
        except ValueError as e:
            raise ExportError(str(e)) from None
        written["codec"] = write_codec_json(out_dir, entry.name, family.export_extras(modules), provenance)
    return written


def _is_export_file(path: Path) -> bool:
    """What an export folder holds: ``NAME.json`` / ``NAME.safetensors`` pairs and codec.json."""
    return path.is_file() and not path.is_symlink() and path.suffix in (".json", ".safetensors")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="gvc-export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint",
        help="a training checkpoint (.ckpt) written by gvc-train; read without unpickling code (tensors and plain "
        "values only): a file holding other pickled types is refused",
    )
    parser.add_argument("--out", required=True, help="folder to write the component(s) into: new, empty, or an earlier export with --overwrite")
    parser.add_argument("--component", action="append", help="export only this component (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out (a folder holding only .json/.safetensors files)")
    args = parser.parse_args(argv)
    raise_on_sigterm()
    out = Path(args.out)
    try:
        # The whole folder is written beside --out and moved into place when complete: a failed
        # export leaves nothing, and never touches what --out held unless --overwrite.
        with atomic_output(out, inputs=[args.checkpoint], overwrite=args.overwrite, folder=True, owns=_is_export_file) as tmp:
            written = export_checkpoint(args.checkpoint, tmp, args.component)
    except (ExportError, ComponentError, OutputError) as e:
        print(f"gvc-export: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gvc-export: interrupted; nothing was written", file=sys.stderr)
        return 130
    for name, path in written.items():
        path = out / path.name
        print(f"exported {name}: {path}" + ("" if name == "codec" else f" + {path.with_suffix('.safetensors').name}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
