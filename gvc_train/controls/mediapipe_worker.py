"""The mediapipe side of the pose and selfie-segmentation extractors: a script that runs in its own
venv (``.venv-mediapipe``, made by ``make setup`` from requirements-mediapipe.txt).

Why a second venv: mediapipe 0.10.21 is the last release that bundles its legacy models (pose,
selfie segmentation) and it needs protobuf < 5, while the main stack's wandb needs protobuf >= 5.
So the extractors (:mod:`gvc_train.controls.mediapipe_client`) start this file with that venv's
python and exchange numpy arrays with it over stdin/stdout.

This file imports only the standard library and numpy at the top (the main venv imports it for
:func:`send` and :func:`receive`); mediapipe is imported when the worker runs.

Messages, both ways: one JSON line (the header; ``"arrays"`` lists each array's dtype and shape),
then each array's raw C-order bytes. Nothing is pickled.

Requests and replies:
- ``{"op": "pose", "settings": {...}}`` + frames ``T x H x W x 3`` uint8 RGB ->
  landmarks ``T x 33 x 3`` float32 (x, y normalised to the frame, visibility) and found ``T`` bool.
- ``{"op": "selfie", "settings": {...}}`` + frames -> person probability ``T x H x W`` float32 in [0, 1].
- A failure replies ``{"error": "one line"}`` and the worker goes on with the next request.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np

POSE_LANDMARKS = 33  # mediapipe's BlazePose topology


def send(stream: BinaryIO, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> None:
    arrays = [np.ascontiguousarray(a) for a in arrays]
    header = {**header, "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays]}
    stream.write(json.dumps(header).encode() + b"\n")
    for a in arrays:
        stream.write(a.tobytes())
    stream.flush()


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError(f"the stream ended {left} bytes short of an array")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(stream: BinaryIO) -> tuple[dict[str, Any], list[np.ndarray]] | None:
    """The next message, or None when the stream has ended before one."""
    line = stream.readline()
    if not line:
        return None
    header = json.loads(line)
    arrays = []
    for spec in header.get("arrays", []):
        dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
        if dtype.hasobject:
            raise ValueError("object arrays are not exchanged")
        count = int(np.prod(shape, dtype=np.int64))
        arrays.append(np.frombuffer(_read_exactly(stream, count * dtype.itemsize), dtype=dtype).reshape(shape))
    return header, arrays


def _pose(frames_THWC: np.ndarray, settings: dict[str, Any]) -> list[np.ndarray]:
    from mediapipe.python.solutions import pose

    landmarks = np.zeros((len(frames_THWC), POSE_LANDMARKS, 3), np.float32)
    found = np.zeros(len(frames_THWC), bool)
    # A new graph per clip: its tracking state belongs to one video, and reusing one across
    # resolutions fails in mediapipe's SegmentationSmoothingCalculator.
    with pose.Pose(static_image_mode=False, model_complexity=1, enable_segmentation=False, **settings) as model:
        for t, frame in enumerate(frames_THWC):
            result = model.process(frame)
            if result.pose_landmarks is None:
                continue
            found[t] = True
            landmarks[t] = [(p.x, p.y, p.visibility) for p in result.pose_landmarks.landmark]
    return [landmarks, found]


def _selfie(frames_THWC: np.ndarray, settings: dict[str, Any]) -> list[np.ndarray]:
    from mediapipe.python.solutions import selfie_segmentation

    masks = np.zeros(frames_THWC.shape[:3], np.float32)
    with selfie_segmentation.SelfieSegmentation(**settings) as model:
        for t, frame in enumerate(frames_THWC):
            masks[t] = model.process(frame).segmentation_mask
    return [masks]


OPS = {"pose": _pose, "selfie": _selfie}


def main() -> None:
    # Replies go to a private copy of fd 1; fd 1 itself (Python's and the C++ libraries' prints)
    # goes to stderr, so nothing a library prints can corrupt the reply stream.
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    import mediapipe  # noqa: F401  (fail here, at start, when the venv lacks it)

    send(stdout, {"ready": mediapipe.__version__})
    while (message := receive(stdin)) is not None:
        header, arrays = message
        try:
            op = OPS[header["op"]]
            (frames_THWC,) = arrays
            if frames_THWC.dtype != np.uint8 or frames_THWC.ndim != 4 or frames_THWC.shape[-1] != 3:
                raise ValueError(f"frames must be T x H x W x 3 uint8, got {frames_THWC.dtype} {frames_THWC.shape}")
            reply = op(np.ascontiguousarray(frames_THWC), header.get("settings", {}))
        except Exception as e:  # one request's failure is reported, the worker stays up
            send(stdout, {"error": f"{type(e).__name__}: {e}".splitlines()[0]})
            continue
        send(stdout, {}, reply)


if __name__ == "__main__":
    main()
