"""The ``pose`` control: human keypoints per frame from mediapipe's bundled pose model.

mediapipe runs in its own venv (:mod:`gvc_train.controls.mediapipe_client`): ``make setup``
makes it, so this extractor works offline with the model that mediapipe 0.10.21 ships.
"""

from __future__ import annotations

import numpy as np
import torch

from gvc_train.controls import mediapipe_client
from gvc_train.controls.registry import ControlExtractor, register_extractor
from gvc_train.frames import tensor_to_frames

# mediapipe 0.10.21 bundles only the "full" pose landmark model; 0 (lite) and 2 (heavy) are
# downloaded on first use, which fails offline.
BUNDLED_MODEL_COMPLEXITY = 1


@register_extractor("pose")
class PoseExtractor(ControlExtractor):
    """mediapipe's legacy Pose (BlazePose full, 33 keypoints) over a clip, tracking from frame to frame.

    Output (``LAYOUTS["pose"]``): a list of T ``torch.float32`` tensors ``P_t x 33 x 3``; P_t is 1
    when mediapipe finds a person in frame t and 0 otherwise (the model follows one person). Each
    keypoint is (x, y, confidence): x and y in [0, 1] of the frame's width and height (keypoints
    that mediapipe places outside the frame are clamped to its border), confidence is mediapipe's
    visibility in [0, 1]. Keypoint order: mediapipe's ``PoseLandmark`` (0 nose ... 32 right foot index).

    Settings: mediapipe's detection and tracking thresholds, landmark smoothing across frames,
    and the model complexity (only 1 is bundled). Each clip gets a new graph, so no state leaks
    from one clip into the next.
    """

    def __init__(
        self,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        smooth_landmarks: bool = True,
        model_complexity: int = BUNDLED_MODEL_COMPLEXITY,
    ) -> None:
        thresholds = {"min_detection_confidence": min_detection_confidence, "min_tracking_confidence": min_tracking_confidence}
        for name, value in thresholds.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if model_complexity != BUNDLED_MODEL_COMPLEXITY:
            raise ValueError(
                f"model_complexity={model_complexity}: mediapipe bundles only the model_complexity=1 pose model "
                "(0 and 2 would be downloaded, and extraction runs offline)"
            )
        self.min_detection_confidence = float(min_detection_confidence)
        self.min_tracking_confidence = float(min_tracking_confidence)
        self.smooth_landmarks = bool(smooth_landmarks)
        self.model_complexity = int(model_complexity)

    def extract(self, clip_CThw: torch.Tensor, caption: str | None = None) -> list[torch.Tensor]:
        """The clip's keypoints (``3 x T x H x W`` float32 in [0, 1] -> the layout above)."""
        settings = {
            "min_detection_confidence": self.min_detection_confidence,
            "min_tracking_confidence": self.min_tracking_confidence,
            "smooth_landmarks": self.smooth_landmarks,
        }
        landmarks_TJ3, found_T = mediapipe_client.run("pose", settings, tensor_to_frames(clip_CThw))
        landmarks_TJ3 = np.clip(landmarks_TJ3, 0.0, 1.0)
        return [
            torch.from_numpy(landmarks_TJ3[t : t + 1].copy()) if found else torch.zeros(0, landmarks_TJ3.shape[1], 3)
            for t, found in enumerate(found_T)
        ]
