"""The video processor slot of the tiny zoo's processors, without torchvision: :class:`NoVideoProcessor`
fills it, :func:`video_slot_ok` lets transformers accept it."""

from __future__ import annotations

import contextlib

import transformers as T
from transformers.video_processing_utils import VideoProcessorMixin

__all__ = ["NoVideoProcessor", "video_slot_ok"]


class NoVideoProcessor(VideoProcessorMixin):
    """Fills the ``video_processor`` slot; the real ones need torchvision, which is not installed.

    It saves under the family's real video processor class (``saved_as``), so that a directory written
    by :func:`mech.testing.tiny.save_tiny` reads like a real checkpoint: with torchvision, transformers
    builds the real video processor from it; without, ``mech.load`` leaves that part out.
    """

    merge_size = 2
    temporal_patch_size = 2
    patch_size = 8
    num_frames = 2
    fps = 1

    def __init__(self, saved_as: str, **kwargs):
        super().__init__(**kwargs)
        self.saved_as = saved_as

    def __call__(self, *args, **kwargs):
        raise NotImplementedError("tiny zoo: video preprocessing needs torchvision")

    preprocess = __call__

    def to_dict(self):
        d = super().to_dict()
        d["video_processor_type"] = d.pop("saved_as")
        return d


@contextlib.contextmanager
def video_slot_ok():
    """Let a processor with a ``video_processor`` slot be constructed without torchvision.

    Without torchvision, ``transformers`` does not export ``VideoProcessorMixin``, so
    ``ProcessorMixin.check_argument_for_proper_class`` cannot resolve the class name and raises for
    every video-capable processor. For the duration of one constructor call, the video slot is checked
    against the real ``VideoProcessorMixin`` directly; SmolVLM's ``num2words`` (used only to phrase
    video prompts) gets ``str`` as a stand-in. Everything is restored on exit.
    """
    import transformers.models.smolvlm.processing_smolvlm as smol

    original = T.ProcessorMixin.check_argument_for_proper_class
    old_n2w = smol.num2words

    def check(self, argument_name, argument):
        if argument_name == "video_processor" and not hasattr(T, "VideoProcessorMixin"):
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(f"{type(argument).__name__} is not a VideoProcessorMixin")
            return VideoProcessorMixin
        return original(self, argument_name, argument)

    T.ProcessorMixin.check_argument_for_proper_class = check
    smol.num2words = old_n2w or str
    try:
        yield
    finally:
        T.ProcessorMixin.check_argument_for_proper_class = original
        smol.num2words = old_n2w
