"""The inference memory budget (``gvc --max-memory``): how much a coding process may hold.

A budget is the resident size of the whole process (imports and weights included), because that
is what a user's machine runs out of. After the codec is loaded, what is left goes to the
decoding plan: each family offers plans ordered fastest first with an estimate of the bytes
they add, and the first that fits is used (for a causal tokenizer: untiled, one frame at a
time, horizontal strips, strips with their caches in a file; models/tokenizer/tiling.py). Plans
never change a decoded bit, so the encoder and the decoder may run under different budgets.
"""

from __future__ import annotations

import os
import re
import resource
import sys

# Fits a laptop beside its browser; 1280x720 and 1920x1080 decode within it with the reference
# codec (README, make bench).
DEFAULT_MAX_MEMORY = int(1.5 * 2**30)
ENV_VAR = "GVC_MAX_MEMORY"
# Held outside the plan: entropy decoding's buffers, the frame sink, allocator slack.
SLACK_BYTES = 96 * 2**20

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


class OverBudget(ValueError):
    """The smallest plan needs more memory than the budget leaves."""


class DefaultBudget(int):
    """The budget nobody chose (:func:`default_max_memory` without ``GVC_MAX_MEMORY``): plans aim
    at it, but a decode whose smallest plan needs more still runs in that plan, with a warning,
    rather than failing where it ran before budgets existed. A chosen budget is a plain int and
    is refused when not even the smallest plan fits."""


def parse_memory(text: str | int) -> int:
    """Bytes from ``"1.5G"``, ``"800M"``, ``"2GiB"`` or a plain number of bytes (K/M/G/T are
    powers of 1024 when written ``Ki``/``Mi``/``Gi``/``Ti``, of 1000 otherwise; a trailing B is
    optional)."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", str(text).lower())
        if not match:
            raise ValueError(f"not a memory size: {text!r} (e.g. 1.5G, 800M, 2GiB)")
        value = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if value <= 0:
        raise ValueError(f"a memory budget must be positive, got {text!r}")
    return value


def default_max_memory() -> int:
    """``GVC_MAX_MEMORY`` when set, else :data:`DEFAULT_MAX_MEMORY` (as a :class:`DefaultBudget`)."""
    value = os.environ.get(ENV_VAR)
    if not value:
        return DefaultBudget(DEFAULT_MAX_MEMORY)
    try:
        return parse_memory(value)
    except ValueError as e:
        raise ValueError(f"{ENV_VAR}: {e}") from None


def resident_bytes() -> int:
    """This process's resident size now (Linux), else its peak so far (the closest portable figure)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# What the unchosen default leaves a plan at least, whatever the process already holds: a big
# process (an evaluation, a test run) calling a codec is not the laptop the default is for.
DEFAULT_HEADROOM = 512 * 2**20


def budget_left(max_memory: int | None) -> int:
    """What a plan may add to the process now: the budget less the resident size and slack
    (under the unchosen default, at least :data:`DEFAULT_HEADROOM`)."""
    total = default_max_memory() if max_memory is None else max_memory
    left = total - resident_bytes() - SLACK_BYTES
    return max(left, DEFAULT_HEADROOM) if isinstance(total, DefaultBudget) else left


def whole_pass_refusal(what: str, need: int, max_memory: int | None) -> str | None:
    """For a pass that has no smaller plan (a transformer sampling a whole clip): None when its
    ``need`` bytes fit what the budget leaves now, else why not, in one line. Without a budget
    (``max_memory`` None) the default one applies here: this check is also what refuses a forged
    header's 16384x16384 clips before anything is allocated."""
    budget = default_max_memory() if max_memory is None else max_memory
    left = budget_left(budget)
    if need <= left:
        return None
    return (
        f"{what} needs ~{describe_bytes(need)}, more than the memory budget of {describe_bytes(budget)} leaves "
        f"({describe_bytes(max(0, left))}): raise --max-memory (or {ENV_VAR}) or scale the video down"
    )


def describe_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
