"""Open-vocabulary, annotation-free segmentation (Seifi et al. 2024): SAM proposes masks, CLIP names them."""

from datus.openvocab.automatic import AutomaticMasks, MaskProposal, deduplicate, paint, point_grid, stability_score
from datus.openvocab.models import ClipImageEncoder, ClipTextEncoder, ModelFileError, SamImageEncoder, SamPromptDecoder
from datus.openvocab.naming import ClipNamer, class_embeddings, mask_crop
from datus.openvocab.tokenizer import ClipTokenizer, prompts

__all__ = ["AutomaticMasks", "ClipImageEncoder", "ClipNamer", "ClipTextEncoder", "ClipTokenizer", "MaskProposal",
           "ModelFileError", "SamImageEncoder", "SamPromptDecoder", "class_embeddings", "deduplicate", "mask_crop", "paint", "point_grid",
           "prompts", "stability_score"]
