"""gvc_train.controls: what the generative families send instead of most frames.

Control extractors turn a clip into compact per-frame signals (luma sketch, edges, optical flow,
segmentation, pose, a caption) and keyframe policies choose which frames are coded in full.
Extractors are found by name (:mod:`gvc_train.controls.registry`); their coders, which turn a
control into counted bits and back, live in :mod:`gvc_train.coding.controls`. Pure
torch/numpy/OpenCV (and mediapipe or transformers where a model is needed): no Lightning.
"""
