"""Tar shards on disk: :class:`ShardSink` writes samples into ``{prefix}-%06d.tar`` files, each
as ``.partial`` renamed when complete; :func:`prepare_out_dir` clears (or refuses) earlier ones.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from typing import Any

from gvc_train.data.sample_format import INDEX_FILE, ShardInfo

_TAR_BLOCK = 512


class ShardSink:
    """Writes samples into ``{prefix}-%06d.tar`` files, rotating on count and size."""

    def __init__(self, out_dir: str, prefix: str, maxcount: int, maxsize: int) -> None:
        self.out_dir, self.prefix, self.maxcount, self.maxsize = out_dir, prefix, maxcount, maxsize
        self.shards: list[ShardInfo] = []
        self._tar: Any = None
        self._file: Any = None
        self._count = self._frames = self._size = 0

    def write(self, clip: Any) -> None:
        """``clip``: an :class:`~gvc_train.data.shard_encode.EncodedClip` or any object with
        ``sample()`` and ``meta.num_frames``."""
        sample = clip.sample()
        size = sum(_TAR_BLOCK + -(-len(v) // _TAR_BLOCK) * _TAR_BLOCK for k, v in sample.items() if k != "__key__")
        end = 2 * _TAR_BLOCK  # the end-of-archive blocks
        if self._tar is not None and (
            self._count >= self.maxcount or self._size + size + end > self.maxsize
        ):
            self._finish()
        if self._tar is None:
            self._start()
        self._add(sample)
        self._count += 1
        self._frames += clip.meta.num_frames
        self._size += size

    def close(self) -> list[ShardInfo]:
        if self._tar is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (its ``.partial`` file); finished shards stay."""
        if self._tar is None:
            return
        self._tar = None
        try:
            self._file.close()
        finally:
            if os.path.exists(self._partial):
                os.remove(self._partial)

    def _start(self) -> None:
        self._name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._partial = os.path.join(self.out_dir, self._name + ".partial")
        self._file = open(self._partial, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.USTAR_FORMAT)
        self._count = self._frames = self._size = 0

    def _add(self, sample: dict[str, Any]) -> None:
        # The layout of webdataset.TarWriter (members "<key>.<field>", fields sorted, ustar),
        # written with tarfile directly: importing webdataset pulls in torch (3 s, 500 MB per
        # process) for what is a plain tar. mtime is fixed so that shards are reproducible.
        key = sample["__key__"]
        for field in sorted(k for k in sample if k != "__key__"):
            data = sample[field]
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self._tar.addfile(info, io.BytesIO(data))

    def _finish(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = os.path.join(self.out_dir, self._name)
        os.replace(self._partial, final)
        self.shards.append(ShardInfo(self._name, self._count, self._frames, os.path.getsize(final)))
        self._tar = None


def prepare_out_dir(out_dir: str, prefix: str, overwrite: bool) -> None:
    os.makedirs(out_dir, exist_ok=True)
    ours = re.compile(rf"^{re.escape(prefix)}-\d{{6}}\.tar(\.partial)?$")
    existing = sorted(n for n in os.listdir(out_dir) if ours.match(n) or n == INDEX_FILE)
    finished = [n for n in existing if not n.endswith(".partial")]
    if finished and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds {', '.join(finished[:3])}{' ...' if len(finished) > 3 else ''}; "
            "pass overwrite=True (--overwrite) to replace them"
        )
    # The index goes first: a run interrupted while deleting must not leave a stale "complete" marker.
    for name in sorted(existing, key=lambda n: n != INDEX_FILE):
        os.remove(os.path.join(out_dir, name))
