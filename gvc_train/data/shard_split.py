"""Shard lists for the data pipeline: spec expansion, the per-stream split, stream seeds.

A *stream* is one (rank, DataLoader worker) pair. ``expand_shards`` turns shard specs into
the same ordered URL list on every rank; ``split_for_stream`` gives each stream its disjoint
share of it, and ``batches_per_stream`` the batch count that makes every stream (and so
every rank) end an epoch together. ``stable_seed`` derives per-stream seeds that are the same
in every process.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from collections.abc import Sequence

import braceexpand

log = logging.getLogger(__name__)

_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # pipe:, s3://, http://; not C:\ paths


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard specs -> the ordered list of shard URLs.

    Each spec is brace-expanded (``shard-{000000..000009}.tar``), then a local one is globbed
    (webdataset does not glob); a directory stands for the ``*.tar`` files in it. ``pipe:``
    and ``scheme://`` URLs are passed through after brace expansion. Glob matches are sorted so
    every rank builds the same list, which the rank/worker split relies on; duplicates are
    dropped for the same reason (a shard listed twice would be read twice).
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise ValueError("no shard spec given")
    urls: list[str] = []
    for one in specs:
        for item in braceexpand.braceexpand(os.fspath(one)):
            if _REMOTE.match(item):
                urls.append(item)
                continue
            path = os.path.expanduser(item)
            if os.path.isdir(path):
                found = sorted(glob.glob(os.path.join(glob.escape(path), "*.tar")))
                if not found:
                    raise FileNotFoundError(f"shard directory {item!r} holds no *.tar file")
            elif glob.has_magic(path):
                found = sorted(p for p in glob.glob(path) if os.path.isfile(p))
                if not found:
                    raise FileNotFoundError(f"no shard matches {item!r}")
            elif os.path.isfile(path):
                found = [path]
            else:
                raise FileNotFoundError(f"shard {item!r} does not exist")
            urls.extend(found)
    unique = list(dict.fromkeys(urls))
    if len(unique) < len(urls):
        log.info("shard specs name %d shard(s) more than once; each is read once", len(urls) - len(unique))
    return unique


def streams_per_epoch(world_size: int, num_workers: int) -> int:
    """Independent streams feeding one epoch: every DataLoader worker of every rank."""
    return world_size * max(1, num_workers)


def batches_per_stream(samples_per_epoch: int, world_size: int, num_workers: int, batch_size: int) -> int:
    """Batches each stream yields so that the epoch is (at most) ``samples_per_epoch`` samples.

    ``samples_per_epoch`` is global (all ranks). Each of the ``world_size * num_workers``
    streams yields ``samples_per_epoch // (world_size * num_workers * batch_size)`` batches;
    the floor makes the count the same on every rank (it depends on nothing rank-specific), so
    no rank reaches the epoch end while another still waits in a gradient all-reduce. The real
    epoch is that count times ``world_size * num_workers * batch_size`` samples, rounded down
    from the request by less than one batch per stream.
    """
    per = samples_per_epoch // (streams_per_epoch(world_size, num_workers) * batch_size)
    if per < 1:
        raise ValueError(
            f"samples_per_epoch={samples_per_epoch} is less than one batch for each of "
            f"{world_size} rank(s) x {max(1, num_workers)} worker(s) x batch_size {batch_size}"
        )
    return per


def split_for_stream(urls: Sequence[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """This stream's shards: every ``world_size``-th from ``rank``, then every worker-th of those.

    Over all (rank, worker) pairs this is a partition of ``urls``: disjoint, covering all.
    """
    return list(urls)[rank::world_size][worker::num_workers]


def check_splittable(num_shards: int, world_size: int, num_workers: int) -> None:
    """Refuse (clearly, at setup) a split that would leave a training stream without shards."""
    streams = streams_per_epoch(world_size, num_workers)
    if num_shards < streams:
        raise ValueError(
            f"{num_shards} shards cannot be split over {world_size} ranks x {max(1, num_workers)} "
            "workers; make more shards with gvc-shard --maxcount or use resampled=True"
        )


def stable_seed(*parts: int) -> int:
    """A 63-bit seed from integers, the same in every process (``hash()`` of str is not)."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
