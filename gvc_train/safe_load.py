"""Reading torch files a user passes (checkpoints, state dicts) without unpickling code.

``torch.load`` unpickles, and a pickle can name any Python callable (``os.system``,
``builtins.exec``...) and call it while loading: a crafted ``.ckpt`` runs its code before a
single check could look at it. Everything here reads with torch's weights-only unpickler, which
builds only tensors, storages, dtypes and Python's plain containers and numbers, and refuses
every other type; on top of it, :func:`check_torch_file` lists the file's pickled types without
loading anything (a static scan of the pickle's opcodes), so that a refusal names the type and
so that loaders which unpickle on their own (Lightning's FSDP strategy reads a full checkpoint
with a plain ``pickle.Unpickler``) can be gated before they start.

``ALLOWED_GLOBALS`` is what gvc_train allows beyond torch's own weights-only set, and it is
empty: every checkpoint a stage writes is plain data. RNG states are stored as tensors and
tuples of ints (``lit/step_guard.py``), provenance as strings (``provenance.py``), Lightning keeps
hyper-parameters as a plain dict and its loop, callback, optimizer and scheduler states as
dicts of numbers, strings and tensors. ``tests/test_no_unpickling.py`` scans the checkpoints of
each stage, so a new non-plain entry fails there rather than at a user's resume; make the new
entry plain instead of adding a type here.

Only torch is imported: the inference side (codecs/) may use this module too.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

ALLOWED_GLOBALS: tuple[Any, ...] = ()

_WHY = "not loaded, because unpickling it could run code"


class UnsafeFile(ValueError):
    """A file a loader refused to unpickle (one line: the file, the refused type, why)."""


class NotTorchFile(ValueError):
    """Neither a ``torch.save`` zip archive nor a pickle: nothing to refuse, nothing to read."""


def _allowed_names() -> set[str]:
    return {f"{g.__module__}.{g.__qualname__}" for g in ALLOWED_GLOBALS}


def _label(source: Any, what: str) -> str:
    return f"{what} {source}" if isinstance(source, (str, os.PathLike)) else what


def check_torch_file(source: str | os.PathLike | IO[bytes], what: str = "checkpoint") -> None:
    """Raise :class:`UnsafeFile` if ``source``, a ``torch.save`` zip archive, pickles a type that
    the weights-only unpickler (plus ``ALLOWED_GLOBALS``) does not build. Nothing is unpickled:
    the scan reads the opcodes, and an opcode outside the plain subset is refused too. A file in
    torch's legacy (pre-1.6, not zip) format, or any other file, has no archive to scan: it is
    read with the weights-only unpickler instead (small files in practice: DISTS's weights.pt)."""
    label = _label(source, what)
    opened = open(source, "rb") if isinstance(source, (str, os.PathLike)) else None
    f = opened or source
    try:
        start = f.tell()
        is_zip = zipfile.is_zipfile(f)
        f.seek(start)
        if not is_zip:
            if f.read(1) != b"\x80":  # every torch.save pickle starts with PROTO (protocol >= 2)
                raise NotTorchFile(f"{label} is not a torch.save file (neither a zip archive nor a pickle)")
            f.seek(start)
            try:
                torch.load(f, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                raise refusal(source, what, e) from None
            except Exception as e:  # noqa: BLE001 - not a torch file at all
                raise NotTorchFile(f"{label} is not a torch.save file ({type(e).__name__}: {_first_line(e)})") from None
            finally:
                f.seek(start)
            return
        try:
            refused = torch.serialization.get_unsafe_globals_in_checkpoint(f)
        except pickle.UnpicklingError as e:  # an opcode torch's plain subset does not have
            raise UnsafeFile(f"{label} uses pickle features beyond plain data ({_first_line(e)}); {_WHY}") from None
        except ValueError as e:  # a TorchScript archive, or not a torch.save file at all
            raise UnsafeFile(f"{label}: {_first_line(e)}; {_WHY}") from None
        except (RuntimeError, KeyError, EOFError, zipfile.BadZipFile) as e:
            reason = f"{type(e).__name__}: {_first_line(e)}"
            raise NotTorchFile(f"{label} is not a readable torch.save archive ({reason})") from None
        finally:
            f.seek(start)
    finally:
        if opened is not None:
            opened.close()
    refused = sorted(set(refused) - _allowed_names())
    if refused:
        more = f" (and {len(refused) - 1} more type(s))" if len(refused) > 1 else ""
        raise UnsafeFile(f"{label} holds a pickled {refused[0]}{more}, not a type gvc_train's files contain; {_WHY}")


def load_torch_file(source: str | os.PathLike | IO[bytes], map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load`` that never unpickles code: :func:`check_torch_file`, then the weights-only
    unpickler (explicitly: ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off) with
    ``ALLOWED_GLOBALS``. Refusals are :class:`UnsafeFile`; a missing file is ``FileNotFoundError``."""
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise FileNotFoundError(f"{what} not found: {source}")
    check_torch_file(source, what)
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # a legacy file, or the scan passed and the unpickler still refused
        raise refusal(source, what, e) from None


def load_state_dict_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``.safetensors`` or a torch file (never unpickling code), for
    local pretrained weights (LPIPS and DISTS backbones). Every failure is one line naming ``what``
    and the file: missing (FileNotFoundError), refused (:class:`UnsafeFile`), unreadable or not a
    dict of tensors (ValueError)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = load_torch_file(path, map_location="cpu", what=what)
    except ValueError:  # UnsafeFile / NotTorchFile: already one line that names the file
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes the same one-line error
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{what} {path} cannot be read as a state dict: {type(e).__name__}: {first}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what} {path} is not a state dict of tensors")
    return state


def refusal(source: Any, what: str, e: pickle.UnpicklingError) -> ValueError:
    """The one-line :class:`UnsafeFile` for the weights-only unpickler's (long) refusal, or for
    a file that is no pickle at all."""
    if "Weights only load failed" not in str(e):
        return NotTorchFile(f"{_label(source, what)} is not a torch.save file (UnpicklingError: {_first_line(e)})")
    reason = _refused_reason(e)
    return UnsafeFile(f"{_label(source, what)}{' ' if reason.startswith('holds') else ': '}{reason}; {_WHY}")


def _refused_reason(e: BaseException) -> str:
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"holds a pickled {found.group(1)}, not a type gvc_train's files contain"
    reason = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else ""
    lines = [ln.strip() for ln in reason.splitlines() if ln.strip()]
    return f"not plain pickled data ({lines[0][:200] if lines else 'refused by the weights-only unpickler'})"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def open_for_check(path: str) -> IO[bytes]:
    """A seekable binary stream for ``path`` (local, or a remote URL through fsspec)."""
    if "://" not in path:
        return open(path, "rb")
    import fsspec

    with fsspec.open(path, "rb") as remote:
        return io.BytesIO(remote.read())
