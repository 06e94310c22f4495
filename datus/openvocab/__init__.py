"""Open-vocabulary, annotation-free segmentation (Seifi et al. 2024): SAM proposes masks, CLIP names them."""

from datus.openvocab.models import ClipImageEncoder, ClipTextEncoder, ModelFileError, SamImageEncoder, SamPromptDecoder
from datus.openvocab.tokenizer import ClipTokenizer, prompts

__all__ = ["ClipImageEncoder", "ClipTextEncoder", "ClipTokenizer", "ModelFileError", "SamImageEncoder",
           "SamPromptDecoder", "prompts"]
