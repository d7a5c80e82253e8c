"""A clip's control, in its layout (``gvc_train.controls.registry.LAYOUTS``), as the float map the
controlled transformer's encoders take: ``C x T x H x W`` float32 on the caller's frame size.

Stack clips with ``torch.stack`` to get the model's ``B x C x T x H x W``. ``H x W`` is the grid
the model's ``control_scale`` expects (``latent h x w * control_scale``: the video's size for the
default 8). Channels per modality (:func:`map_channels`): luma 1 (luma / 255), edges 1 (0/1, area
resized: edge density), segmentation ``classes`` (one-hot, area resized: class fractions), flow 2
(a zero flow for the first frame, then each frame's flow from the previous one, in pixels of the
``H x W`` grid), pose ``joints`` (:func:`pose_heatmaps`: one Gaussian per joint and person, the
brightest person wins, scaled by the keypoint's confidence). Caption is text, not a map.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

MAP_MODALITIES = ("luma", "edges", "segmentation", "flow", "pose")


def map_channels(name: str, classes: int | None = None, joints: int | None = None) -> int:
    """The channels of ``name``'s map (``controls`` in the transformer's config)."""
    fixed = {"luma": 1, "edges": 1, "flow": 2}
    if name in fixed:
        return fixed[name]
    if name == "segmentation" and classes:
        return int(classes)
    if name == "pose" and joints:
        return int(joints)
    raise ValueError(f"no map for control {name!r} (segmentation needs classes, pose joints; maps: {MAP_MODALITIES})")


def _resize(maps_CThw: torch.Tensor, size_hw: tuple[int, int], mode: str) -> torch.Tensor:
    """``C x T x h x w`` -> ``C x T x H x W``, frame by frame."""
    if tuple(maps_CThw.shape[-2:]) == tuple(size_hw):
        return maps_CThw
    frames_TChw = maps_CThw.transpose(0, 1)
    resized = F.interpolate(frames_TChw, size=size_hw, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    return resized.transpose(0, 1)


def pose_heatmaps(people_per_frame: list[torch.Tensor], joints: int, size_hw: tuple[int, int], sigma: float = 2.0) -> torch.Tensor:
    """``joints x T x H x W`` float32 in [0, 1]: per frame, a Gaussian (``sigma`` pixels of the
    ``H x W`` grid) at every person's keypoint ``(x, y)`` in [0, 1] of the frame, scaled by its
    confidence; the maximum over people (a frame without people is zero)."""
    H, W = size_hw
    ys_H1 = torch.arange(H, dtype=torch.float32)[:, None] + 0.5
    xs_1W = torch.arange(W, dtype=torch.float32)[None, :] + 0.5
    maps = torch.zeros(joints, len(people_per_frame), H, W)
    for t, people_PJ3 in enumerate(people_per_frame):
        if people_PJ3.numel() == 0:
            continue
        if people_PJ3.shape[1:] != (joints, 3):
            raise ValueError(f"pose frame {t}: {tuple(people_PJ3.shape)} is not P x {joints} x 3")
        x_PJ11 = people_PJ3[..., 0, None, None].float() * W
        y_PJ11 = people_PJ3[..., 1, None, None].float() * H
        confidence_PJ11 = people_PJ3[..., 2, None, None].float().clamp(0, 1)
        gauss_PJHW = torch.exp(-((xs_1W - x_PJ11) ** 2 + (ys_H1 - y_PJ11) ** 2) / (2 * sigma**2)) * confidence_PJ11
        maps[:, t] = gauss_PJHW.amax(dim=0)
    return maps


def control_map(name: str, control: Any, size_hw: tuple[int, int], classes: int | None = None, joints: int | None = None) -> torch.Tensor:
    """One clip's ``control`` (layout of ``name``) as a ``C x T x H x W`` float32 map (module docstring)."""
    if name == "luma":
        return _resize(control.float()[None] / 255.0, size_hw, "area")
    if name == "edges":
        return _resize(control.float()[None], size_hw, "area")
    if name == "segmentation":
        one_hot_ThwC = F.one_hot(control.long(), map_channels(name, classes=classes)).float()
        return _resize(one_hot_ThwC.permute(3, 0, 1, 2), size_hw, "area")
    if name == "flow":
        flow_T2hw = control.float()
        h, w = flow_T2hw.shape[-2:]
        # To pixels of the H x W grid; the first frame has no predecessor: zero flow.
        flow_2Thw = torch.cat([torch.zeros_like(flow_T2hw[:1]), flow_T2hw]).transpose(0, 1)
        scale_21 = torch.tensor([size_hw[1] / w, size_hw[0] / h]).view(2, 1, 1, 1)
        return _resize(flow_2Thw, size_hw, "bilinear") * scale_21
    if name == "pose":
        return pose_heatmaps(control, map_channels(name, joints=joints), size_hw)
    raise ValueError(f"no map for control {name!r} (maps: {MAP_MODALITIES})")


def model_control_map(model: Any, name: str, control: Any, latent_thw: tuple[int, int, int]) -> torch.Tensor:
    """One clip's ``control`` as the ``C x T x H x W`` map ``model`` (a controlled velocity model)
    takes for a ``t x h x w`` latent: on its control encoder's grid, with the channels its config
    gives the modality (segmentation's classes, pose's joints). The training stage and the codec
    both build their maps here, so the model sees at decode time the maps it was trained on."""
    _, *size_hw = model.control_encoders[name].expected_shape(tuple(latent_thw))
    channels = int(model.config["controls"][name])
    return control_map(name, control, (int(size_hw[0]), int(size_hw[1])), classes=channels, joints=channels)
