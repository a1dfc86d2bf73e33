"""Known answers: a synthetic task whose evidence is known, for scoring explanations.

`generate` draws labelled images with the pixel mask of the object that decides their
class (and of the distractors that do not).
"""

from .generator import CLASS_NAMES, CLASSES, DISTRACTORS, KnownAnswerSet, generate, shape_mask

__all__ = ["CLASSES", "CLASS_NAMES", "DISTRACTORS", "KnownAnswerSet", "generate", "shape_mask"]
