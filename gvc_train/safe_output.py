"""How every command writes its output: nothing the user did not name is ever touched.

One mechanism, shared by ``gvc encode/decode/eval``, ``gvc-export`` and ``gvc-shard``:

- **Refuse before working.** The target is checked before anything is computed: it must not be
  one of the inputs (same path, a symlink to it, a hard link to it: same device and inode), a
  file output must not be a folder, and an existing file or non-empty folder is replaced only
  when the user passed ``--overwrite`` (and a folder only when it holds nothing but what the
  command itself writes, so a decode into ``.`` can never delete a stream lying there).
- **Write beside, move into place.** Output goes to a hidden temporary beside the target
  (same file system, so the final ``os.replace`` is atomic) and is moved into place only when
  complete. A failure, Ctrl-C or SIGTERM removes the temporary and nothing else.
- **One file, whole or not at all.** :func:`atomic_write_with` (and :func:`atomic_write_bytes`)
  is the same idea for a single file written by library code (a component's JSON, a checkpoint,
  a cache entry, an assembled bitstream): temporary beside it, fsync, ``os.replace``.
- **Say where partial output went.** Commands that keep partial results (a decode that stops
  midway keeps the frames before the damage) put them under a new name that does not exist yet
  and say that name.

Only the standard library: every command imports this before its heavy dependencies.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_MARK = ".gvc-partial-"


class OutputError(ValueError):
    """The output cannot be written as asked; nothing was written or changed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs."""


def raise_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` (main thread only) so temporaries are removed."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    with contextlib.suppress(ValueError):  # not the main thread: leave the default
        signal.signal(signal.SIGTERM, handler)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _contains(folder: Path, path: Path) -> bool:
    """Whether ``path`` lies inside ``folder`` (after resolving links)."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def check_target(
    target: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    folder: bool = False,
    owns: Callable[[Path], bool] | None = None,
    flag: str = "--overwrite",
) -> Path:
    """Check that ``target`` may be written; raise :class:`OutputError` in one line if not.

    ``folder``: the output is a folder (else a file). ``owns(path)`` says whether a file in an
    existing target folder is of the kind this command writes; a folder holding anything else is
    never replaced, with or without ``overwrite``. Returns ``target`` as a Path.
    """
    target = Path(target)
    for source in inputs:
        source = Path(source)
        if not source.exists():
            continue
        if _same_file(target, source) or (target.exists() and target.is_dir() and _contains(target, source)):
            raise OutputError(f"the output {target} is (or holds) the input {source}: name another output")
    if target.is_symlink() and not target.exists():
        raise OutputError(f"the output {target} is a dangling symbolic link: name another output")
    if not target.exists():
        parent = target.parent
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"cannot write {target}: {parent} is not a folder")
        return target
    if not folder:
        if target.is_dir():
            raise OutputError(f"the output {target} is a folder; name a file")
        if not overwrite:
            raise OutputError(f"{target} exists; pass {flag} to replace it")
        return target
    if not target.is_dir():
        raise OutputError(f"the output {target} exists and is not a folder")
    entries = list(target.iterdir())
    if not entries:
        return target
    foreign = [p for p in entries if owns is None or not owns(p)]
    if foreign:
        raise OutputError(
            f"the output folder {target} holds other files ({foreign[0].name}"
            f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); name a new or empty folder"
        )
    if not overwrite:
        raise OutputError(f"the output folder {target} is not empty; pass {flag} to replace what it holds")
    return target


def temp_beside(target: Path, folder: bool = False) -> Path:
    """A new hidden name beside ``target`` (same file system, so renaming it is atomic).

    The target's suffix is kept so that writers choosing a format by suffix still can."""
    tag = f"{TEMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    return target.with_name(f".{target.stem}{tag}{'' if folder else target.suffix}")


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, temp: Path | None = None) -> Path:
    """Write ``path`` whole or not at all: ``write(f)`` streams into a new temporary beside it
    (``temp``, else :func:`temp_beside`), which is flushed, fsynced and renamed over ``path``.

    On any exception (Ctrl-C included) the temporary is removed and ``path`` is as it was. The
    temporary is created exclusively, so an existing file of that name is never truncated.
    For streamed writers (``torch.save``, a file assembled from parts); returns ``path``.
    """
    path = Path(path)
    tmp = temp_beside(path) if temp is None else temp
    f = open(tmp, "xb")
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all (see :func:`atomic_write_with`)."""
    return atomic_write_with(path, lambda f: f.write(data))


def free_name(path: Path) -> Path:
    """``path``, or ``stem-2.suffix``, ``stem-3.suffix`` ...: the first that does not exist."""
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def keep_aside(path: Path, suffix: str = "-earlier") -> Path | None:
    """Move an existing ``path`` (an earlier run's folder) to a free name ending in ``suffix``,
    so that nothing of it is lost; the new name, or None when there was nothing there."""
    if not path.exists():
        return None
    kept = free_name(path.with_name(path.name + suffix))
    path.rename(kept)
    return kept


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def make_parent(target: Path) -> None:
    """Create the target's parent folders; a failure (read-only, not a folder) in one line."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the folder {target.parent}: {e.strerror or e}") from None
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {target.parent}: permission denied")


def move_into_place(tmp: Path, target: Path, folder: bool = False) -> None:
    """Rename the finished ``tmp`` to ``target``; an existing target (already checked as
    replaceable) is moved aside first and removed only once the new one is in place."""
    if not folder or not target.exists():
        os.replace(tmp, target)  # files: atomic replace; folders: target absent
        return
    old = temp_beside(target, folder=True)
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    remove_path(old)


def commit(
    tmp: Path,
    target: Path,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    folder: bool = False,
    owns: Callable[[Path], bool] | None = None,
) -> None:
    """Move the finished ``tmp`` to ``target``, checking the target again first: something may
    have appeared there while the command worked."""
    check_target(target, inputs=inputs, overwrite=overwrite, folder=folder, owns=owns)
    move_into_place(tmp, target, folder)


@contextlib.contextmanager
def atomic_output(
    target: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    folder: bool = False,
    owns: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """Yield a temporary path to write the whole output to; move it to ``target`` on success.

    On any exception (Ctrl-C and SIGTERM included, see :func:`raise_on_sigterm`) the temporary
    is removed and the target is as it was. ``folder``: the temporary is an empty folder.
    """
    target = check_target(target, inputs=inputs, overwrite=overwrite, folder=folder, owns=owns)
    make_parent(target)
    tmp = temp_beside(target, folder)
    try:
        if folder:
            tmp.mkdir()
        yield tmp
        commit(tmp, target, inputs=inputs, overwrite=overwrite, folder=folder, owns=owns)
    except BaseException:
        remove_path(tmp)
        raise
