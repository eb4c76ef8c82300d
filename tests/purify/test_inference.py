"""Batched prediction: batching by length never changes a text's logits or their order."""
from __future__ import annotations

import numpy as np
import pytest

from purify.inference import length_order, predict, predict_logits
from purify.testing.tiny import tiny_model, tiny_tokenizer, tiny_texts


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_logits_come_back_in_input_order_and_match_one_text_at_a_time(arch):
    model, tokenizer = tiny_model(arch), tiny_tokenizer()
    texts = [t * k for k, t in zip([3, 1, 5, 2, 1, 4, 1, 2], tiny_texts())]  # very uneven lengths
    alone = np.concatenate([predict_logits(model, tokenizer, [t]) for t in texts])
    batched = predict_logits(model, tokenizer, texts, batch_size=3)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert (predict(model, tokenizer, texts, batch_size=3) == alone.argmax(-1)).all()


def test_length_order_is_shortest_first_and_stable():
    tokenizer = tiny_tokenizer()
    texts = ["the movie was good", "good", "the movie", "fun", "the movie was good"]
    assert length_order(tokenizer, texts).tolist() == [1, 3, 2, 0, 4]


def test_predict_restores_training_mode_and_handles_no_texts():
    model, tokenizer = tiny_model("bert").train(), tiny_tokenizer()
    assert predict_logits(model, tokenizer, []).shape == (0, 2)
    predict_logits(model, tokenizer, tiny_texts())
    assert model.training
