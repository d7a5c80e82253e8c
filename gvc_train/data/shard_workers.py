"""The worker-process pool behind :func:`~gvc_train.data.shard_writer.write_shards`.

``run_parallel(tasks, work, arg, workers, ...)`` runs ``work(task, arg)`` for each task in
worker processes and yields what they yield in task order (every item of task 0, then of task
1, ...): the same items in the same order as ``run_inline``, whatever the worker count. Each
task's items end with one *last* item (``is_last``); for the shard writer a task is a source,
its items are encoded clips and the last one is the source's report.

Workers take the next task as soon as they finish one. Items of tasks ahead of the one being
yielded are held here up to ``HELD_BYTES`` (``held_bytes`` says what an item weighs); beyond
that only the worker on the task being yielded is read, and the others wait on their pipes
(bounded memory). A worker that dies is replaced, and its task ends with the last item that
``lost`` makes from the items already received.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections import defaultdict, deque
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

Task = TypeVar("Task")
Arg = TypeVar("Arg")
Item = TypeVar("Item")

HELD_BYTES = 512 << 20  # items held for tasks ahead of the one being yielded (keeps workers busy)


def run_inline(tasks: Iterable[Task], work: Callable[[Task, Arg], Iterator[Item]], arg: Arg) -> Iterator[Item]:
    """Every task's items, in order, computed in this process."""
    for task in tasks:
        yield from work(task, arg)


def _worker(conn: Connection, work: Callable[[Any, Any], Iterator[Any]], arg: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        while True:
            task = conn.recv()
            if task is None:
                return
            for item in work(task, arg):
                conn.send(item)
    except (EOFError, BrokenPipeError):
        return  # the parent has gone


class _Worker:
    """One worker process and its pipe; ``task`` is the index of the task it is running."""

    def __init__(self, ctx: Any, work: Callable[[Any, Any], Iterator[Any]], arg: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, work, arg), daemon=True)
        self.proc.start()
        # Only the worker keeps its end: if it dies, even half-way through sending an item,
        # our recv() sees EOF instead of waiting forever for the rest of the message.
        child.close()
        self.task: int | None = None

    def stop(self, graceful: bool) -> None:
        if graceful and self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)
        self.conn.close()


def run_parallel(
    tasks: Sequence[Task],
    work: Callable[[Task, Arg], Iterator[Item]],
    arg: Arg,
    workers: int,
    *,
    is_last: Callable[[Item], bool],
    held_bytes: Callable[[Item], int],
    lost: Callable[[int, int, str], Item],
) -> Iterator[Item]:
    """Like ``run_inline`` (same items, same order) with tasks run by ``workers`` processes.

    ``work`` and ``arg`` must pickle (``work`` a module-level function): the workers are
    spawned. ``is_last(item)``: the item ends its task. ``held_bytes(item)``: its weight
    towards ``HELD_BYTES``. ``lost(index, items, reason)``: the last item of task ``index``
    whose worker died after sending ``items`` items (those are kept and yielded).
    Closing the generator stops the workers.
    """
    # spawn, not fork: the parent may hold threads (tqdm, torch) that fork would copy mid-state
    ctx = mp.get_context("spawn")
    todo = iter(enumerate(tasks))
    held: dict[int, deque[Item]] = defaultdict(deque)
    held_total = 0
    received: dict[int, int] = defaultdict(int)  # items per task, for `lost` if its worker dies
    current = 0  # index of the task whose items go out next
    pool: list[_Worker] = []
    finished = False

    def feed(worker: _Worker) -> None:
        task = next(todo, None)
        worker.task = None if task is None else task[0]
        if task is not None:
            worker.conn.send(task[1])

    try:
        pool = [_Worker(ctx, work, arg) for _ in range(workers)]
        for worker in pool:
            feed(worker)
        while current < len(tasks):
            queue_ = held.get(current)
            while queue_:
                item = queue_.popleft()
                held_total -= held_bytes(item)
                yield item
                if is_last(item):
                    del held[current]
                    current += 1
                    queue_ = held.get(current)
            if current == len(tasks):
                break
            busy = [w for w in pool if w.task is not None]
            if held_total > HELD_BYTES:
                busy = [w for w in busy if w.task == current]
            if not busy:  # cannot happen: the task being yielded is always with a worker
                raise RuntimeError(f"internal error: no worker holds task {current}")
            for conn in wait([w.conn for w in busy]):
                worker = next(w for w in busy if w.conn is conn)
                index = worker.task
                assert index is not None
                try:
                    item = conn.recv()
                except (EOFError, OSError):
                    worker.proc.join(timeout=5)
                    code = worker.proc.exitcode
                    item = lost(index, received[index], f"worker process died while reading it (exit code {code})")
                    worker.stop(graceful=False)
                    slot = pool.index(worker)
                    worker = pool[slot] = _Worker(ctx, work, arg)
                held[index].append(item)
                held_total += held_bytes(item)
                if is_last(item):
                    feed(worker)
                else:
                    received[index] += 1
        finished = True
    finally:
        for worker in pool:
            worker.stop(graceful=finished)
