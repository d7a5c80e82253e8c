"""gvc_train: a training framework for generative video compression."""

__version__ = "0.1.0"
