"""Qwen-Image-Edit's ``processor`` (a ``Qwen2VLProcessor``) built without torchvision.

``Qwen2VLProcessor.from_pretrained`` loads a video processor too, and transformers' video processors
import torchvision; where torchvision is missing (this project's CPU machines: no wheel matches the
installed torch) the load fails although an edit job never touches video. The edit pipelines only
call the processor on text and images, so we build it from the folder's ``processor/`` ourselves: the
PIL image processor, the tokenizer, no video processor. Where torchvision imports, diffusers' normal
load runs and this module is not used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def torchvision_missing() -> bool:
    return importlib.util.find_spec("torchvision") is None


def qwen2vl_processor_class() -> type:
    """``Qwen2VLProcessor`` whose argument check accepts no video processor. transformers' check looks
    each expected base class up by name; a name it does not export (the video processor's, the
    tokenizer's ``MistralCommonBackend``) is searched in the video processor mapping, a torchvision
    placeholder that raises. So the check is the part replaced, by plain ``isinstance``."""
    from transformers import ImageProcessingMixin, PreTrainedTokenizerBase, Qwen2VLProcessor

    class PilQwen2VLProcessor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            expected: dict[str, type] = {
                "image_processor": ImageProcessingMixin,
                "tokenizer": PreTrainedTokenizerBase,
                "video_processor": type(None),
            }
            kind = expected[argument_name]
            if not isinstance(argument, kind):
                raise TypeError(
                    f"Received a {type(argument).__name__} for argument {argument_name}, "
                    f"but a {kind.__name__} was expected."
                )
            return kind

    return PilQwen2VLProcessor


def build_qwen2vl_processor(image_processor: Any, tokenizer: Any) -> Any:
    """A ``Qwen2VLProcessor`` of ``image_processor`` and ``tokenizer``, no video processor."""
    return qwen2vl_processor_class()(image_processor=image_processor, tokenizer=tokenizer, video_processor=None)


def load_qwen2vl_processor(folder: Path) -> Any:
    """The processor saved in ``folder`` (a pipeline's ``processor/``): its image processor config read
    into the PIL image processor, its tokenizer as saved."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    return build_qwen2vl_processor(
        Qwen2VLImageProcessorPil.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    )
