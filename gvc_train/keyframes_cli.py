"""``python -m gvc_train.keyframes_cli VIDEO --config JSON``: the keyframes a policy chooses on a video.

A command above both ``gvc_train.controls`` (the policies) and ``gvc_train.data`` (video
reading): the controls package reads no video files, since the shard writer in ``data`` runs it.
"""

from __future__ import annotations

import argparse
import json

from gvc_train.controls.keyframes import build_keyframe_policy
from gvc_train.data.video_io import iter_frames


def main(argv: list[str] | None = None) -> None:
    """Print the keyframes a policy chooses on a video (streamed: memory is a frame or two)."""
    parser = argparse.ArgumentParser(prog="python -m gvc_train.keyframes_cli", description=main.__doc__)
    parser.add_argument("video", help="a video file or a folder of PNG frames")
    parser.add_argument("--config", default='{"name": "adaptive"}', help='the policy as JSON, e.g. \'{"name": "fixed", "clip_frames": 16}\'')
    parser.add_argument("--max-frames", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        policy = build_keyframe_policy(json.loads(args.config))
    except ValueError as e:  # json.JSONDecodeError is one too
        parser.error(f"--config: {e}")
    selector = policy.selector()
    for frame in iter_frames(args.video, max_frames=args.max_frames):
        selector.push(frame)
    selector.finish()
    found = {"frames": selector.frames, "keyframes": len(selector.keyframes), "indexes": selector.keyframes}
    print(json.dumps({"policy": policy.config(), **found}))


if __name__ == "__main__":
    main()
