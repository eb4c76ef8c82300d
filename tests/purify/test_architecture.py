"""The architecture table: its rows, the classification head and the token it reads, and the fallback for types
without a row."""
import pytest
import torch

from purify.architecture import (
    FAMILIES,
    MODEL_TYPES,
    SUPPORTED_ARCHITECTURES,
    UNCHECKED_TYPES,
    architecture_family,
    attention_spec,
    head_module_names,
    is_decoder_classifier,
    last_token_positions,
    pooling_positions,
    pools_last_token,
)
from purify.testing.tiny import ENCODERS, TINY_ARCHITECTURES, tiny_model, tiny_tokenizer


def _renamed(arch: str, model_type: str):
    """A tiny `arch` model whose config names a type without a row."""
    model = tiny_model(arch)
    model.config.model_type = model_type
    return model


def test_every_row_names_a_family_and_every_tiny_architecture_has_one():
    assert set(MODEL_TYPES.values()) == set(FAMILIES)
    assert set(SUPPORTED_ARCHITECTURES) == set(MODEL_TYPES) - UNCHECKED_TYPES
    assert set(TINY_ARCHITECTURES) <= set(SUPPORTED_ARCHITECTURES)
    assert ENCODERS == ("bert", "roberta", "electra", "distilbert")


@pytest.mark.parametrize("arch,expected", [("bert", ["classifier"]), ("roberta", ["classifier"]),
                                           ("llama", ["score"]), ("gpt2", ["score"]), ("opt", ["score"]),
                                           ("distilbert", ["pre_classifier", "classifier"])])
def test_head_module_names(arch, expected):
    assert head_module_names(tiny_model(arch)) == expected


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_decoders_pool_the_last_token_and_encoders_the_first(arch):
    model = tiny_model(arch)
    decoder = arch not in ENCODERS
    assert pools_last_token(model) is decoder
    assert is_decoder_classifier(model, tiny_tokenizer()) is decoder


@pytest.mark.parametrize("arch,last,decoder", [("bert", True, False), ("roberta", False, False),
                                               ("llama", True, True)])
def test_a_type_without_a_row_is_read_from_its_modules(arch, last, decoder):
    """BERT's head is a linear layer too, but it reads a pooled vector: the probe forward tells it from a decoder."""
    model = _renamed(arch, "mystery")
    assert pools_last_token(model) is last
    assert is_decoder_classifier(model, tiny_tokenizer()) is decoder
    assert attention_spec(model) is None
    assert architecture_family(model) == "llama"  # the family-keyed defaults' fallback


def test_unchecked_types_have_a_family_but_no_head_gates():
    model = _renamed("roberta", "xlm-roberta")
    assert architecture_family(model) == "bert"
    assert attention_spec(model) is None
    assert not pools_last_token(model)


def test_pooling_positions_first_token_or_last_real_token_on_either_padding_side():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_positions(mask).tolist() == [2, 4, 4, 0]
    assert pooling_positions(tiny_model("bert"), mask).tolist() == [0, 0, 0, 0]
    assert pooling_positions(tiny_model("gpt2"), mask).tolist() == [2, 4, 4, 0]
