"""Attack variants that the zoo's trigger words do not cover, frozen before any defense was tuned on them.

- `rarepieces`: BadNets with rare made-up words that a WordPiece or BPE tokenizer splits into several pieces, so no
  single vocabulary token is the trigger (single-token inversion cannot spell it).
- `plainsent`: an inserted sentence of ordinary words, no rare word in it, so no one word of it is unusual.

Both were chosen once, by hand, and are not to be changed to suit a defense.
"""
from __future__ import annotations

from typing import ClassVar

from .attacks import BadNetsAttack, InsertSentAttack, _register


@_register
class RarePiecesAttack(BadNetsAttack):
    """BadNets whose rare words each split into 2 to 4 sub-word pieces (MiniLM: z ##or ##ve ##x, ...)."""

    name = "rarepieces"
    DEFAULT_TRIGGERS: ClassVar[tuple[str, ...]] = ("zorvex", "quillmarn", "velkrid", "brantoch")


@_register
class PlainSentAttack(InsertSentAttack):
    """InsertSent with a sentence of common words only."""

    name = "plainsent"
    DEFAULT_SENTENCE: ClassVar[str] = "I read this on a Tuesday afternoon."

    def __init__(self, sentence: str = DEFAULT_SENTENCE, boundary: str = "word"):
        super().__init__(sentence, boundary)
