"""CLIP's byte-pair tokenizer (OpenCLIP's, which ships the vocabulary) and the class-name prompts.

Not re-implemented: ``open_clip``'s :class:`SimpleTokenizer` reads the BPE vocabulary shipped in its
wheel (``bpe_simple_vocab_16e6.txt.gz``), so no file is downloaded. Texts become ``(N, 77)`` token
ids: the start token 49406, the text's tokens, the end token 49407, zeros after it; a longer text is
cut to fit with the end token kept last, as CLIP was trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ClipTokenizer", "prompts"]

#: The prompt CLIP's authors use for zero-shot classification (any ``{name}`` template works).
DEFAULT_TEMPLATES = ("a photo of a {name}.",)


def prompts(names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[list[str]]:
    """For each class name, its prompts (one per template): ``[["a photo of a car.", ...], ...]``.

    Underscores in dataset class names become spaces ("traffic_light" -> "traffic light")."""
    if not templates:
        raise ValueError("prompt templates: give at least one, e.g. 'a photo of a {name}.'")
    for template in templates:
        if "{name}" not in template:
            raise ValueError(f"prompt template {template!r} has no {{name}} to put the class name in")
    if not names:
        raise ValueError("no class names to prompt CLIP with: the dataset names none (set dataset.class_names)")
    return [[t.format(name=str(n).replace("_", " ")) for t in templates] for n in names]


class ClipTokenizer:
    """``tokenizer(texts) -> (N, context_length)`` int64 token ids (see the module docstring)."""

    def __init__(self, context_length: int = 77) -> None:
        if int(context_length) < 2:
            raise ValueError(f"context_length={context_length} must hold at least the start and end tokens")
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = int(context_length)
        self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        self.start, self.end = self._tokenizer.sot_token_id, self._tokenizer.eot_token_id

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._tokenizer(texts, context_length=self.context_length).numpy().astype(np.int64)
