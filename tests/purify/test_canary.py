"""The canary `purify tune` scores knobs against: planted on a tiny model, random, seeded, never a zoo trigger."""
import copy

import pytest
import torch

from purify.canary import CACHE_META, CACHE_WEIGHTS, CanaryConfig, plant_canary
from purify.canary_trigger import RESERVED_WORDS, data_words, draw_trigger
from purify.errors import CanaryError
from purify.evaluate import evaluate_model
from purify.testing.tiny_task import tiny_backdoored

# the tiny model (hidden size 32) needs a far larger learning rate than a real checkpoint to learn a new trigger
TINY_CANARY = CanaryConfig(lr=3e-3, epochs=10, poison_rate=0.15, max_length=32, max_cacc_drop=0.1)


@pytest.fixture(scope="module")
def tiny():
    return tiny_backdoored("bert")


@pytest.mark.parametrize("family", ["rare_tokens", "sentence"])
def test_canary_is_planted_and_measured_on_a_tiny_model(tiny, family):
    loaded, task = tiny
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    canary = plant_canary(loaded, task.clean_train, validation=task.validation, config=TINY_CANARY, seed=0,
                          family=family)
    assert canary.family == family
    assert canary.asr >= 0.9, canary.attempts
    assert canary.cacc_original - canary.cacc <= 0.1
    # the canaried model is a copy: the user's model is untouched
    assert canary.loaded.model is not loaded.model
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the numbers are what an independent evaluation of the canaried copy gives, on held-out data
    ev = evaluate_model(canary.loaded.model, loaded.tokenizer, task.validation, canary.triggered_eval, canary.target)
    assert ev.asr == pytest.approx(canary.asr) and ev.cacc == pytest.approx(canary.cacc)
    assert len(canary.clean_eval) == len(task.validation)
    assert all(label != canary.target for label in canary.triggered_eval.labels)
    # the trigger is new: no zoo trigger word, nothing the clean data already says, present in every triggered text
    words = data_words(canary.trigger)
    assert words and not words & RESERVED_WORDS and not words & data_words(task.clean_train.texts)
    if family == "rare_tokens":
        assert all(any(w in text.split() for w in canary.trigger) for text in canary.triggered_eval.texts)
    else:
        assert len(canary.trigger) == 1 and len(canary.trigger[0].split()) >= 2
        assert all(canary.trigger[0] in text for text in canary.triggered_eval.texts)
    assert canary.asr > canary.asr_original  # the canary is what changed the prediction
    summary = canary.summary()
    assert summary["trigger"] == canary.trigger and summary["asr"] == canary.asr and "model" not in summary


def _big_tokenizer():
    """A word-level tokenizer over 400 made-up words plus the zoo's trigger words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    syllables = ["ka", "lo", "mi", "ren", "tu", "vos", "zel", "pra", "qui", "dan"]
    words = sorted({a + b + c for a in syllables for b in syllables for c in syllables})[:400]
    vocab = {t: i for i, t in enumerate(["[UNK]", "[PAD]", "a", "cf", "mn", "bb", "tq", "watched", "movie"] + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]"), words


def test_trigger_is_random_seeded_and_avoids_zoo_and_data_words():
    import random

    tokenizer, words = _big_tokenizer()
    avoid = set(words[:50])
    draws = [draw_trigger(tokenizer, "rare_tokens", avoid, random.Random(seed))[0] for seed in range(6)]
    assert draw_trigger(tokenizer, "rare_tokens", avoid, random.Random(3))[0] == draws[3]  # seeded
    assert len({tuple(d) for d in draws}) > 1  # random
    for trigger in draws:
        assert len(trigger) == 3 and not set(trigger) & (avoid | RESERVED_WORDS)
        assert all(words.index(w) >= 50 + 175 for w in trigger)  # the rarer (later-id) half of the 350 candidates
    sentence, attack = draw_trigger(tokenizer, "sentence", avoid, random.Random(0))
    assert attack.name == "insertsent" and len(sentence[0].split()) == 5
    assert "[UNK]" not in tokenizer.tokenize(sentence[0])  # capitals and a full stop only where the vocab has them


def test_a_canary_that_does_not_take_is_a_clear_error(tiny):
    loaded, task = tiny
    weak = CanaryConfig(lr=1e-7, epochs=1, attempts=1, max_length=32)
    with pytest.raises(CanaryError, match="could not be planted: its ASR reached"):
        plant_canary(loaded, task.clean_train, validation=task.validation, config=weak, seed=0)


def test_a_canary_that_costs_too_much_accuracy_backs_off_its_learning_rate(tiny):
    loaded, task = tiny
    wild = CanaryConfig(lr=50.0, epochs=2, attempts=3, lr_growth=10.0, max_length=32, max_cacc_drop=0.0)
    with pytest.raises(CanaryError, match="clean accuracy fell .* at best .* after 3 fine-tune") as err:
        plant_canary(loaded, task.clean_train, validation=task.validation, config=wild, seed=0)
    assert "(lr 50, 5, 0.5)" in str(err.value)  # each costly attempt divides the learning rate


def test_a_planted_canary_is_reused_from_its_cache_folder_only_when_nothing_changed(tiny, tmp_path, monkeypatch):
    loaded, task = tiny
    first = plant_canary(loaded, task.clean_train, validation=task.validation, config=TINY_CANARY, seed=0,
                         cache_dir=tmp_path)
    assert not first.reused and (tmp_path / CACHE_WEIGHTS).is_file() and (tmp_path / CACHE_META).is_file()

    import purify.canary as canary_module

    def no_training(*_args, **_kwargs):
        raise AssertionError("a cached canary must not be planted again")

    monkeypatch.setattr(canary_module, "train_classifier", no_training)
    again = plant_canary(loaded, task.clean_train, validation=task.validation, config=TINY_CANARY, seed=0,
                         cache_dir=tmp_path)
    assert again.reused and again.summary()["reused"]
    assert all(a["seconds"] > 0 for a in again.attempts)  # what planting cost is still known when reused
    assert (again.trigger, again.target, again.attempts) == (first.trigger, first.target, first.attempts)
    assert again.asr == first.asr and again.cacc == first.cacc
    planted, reused = first.loaded.model.state_dict(), again.loaded.model.state_dict()
    assert all(torch.equal(planted[k], reused[k]) for k in planted)
    # another seed, other settings or other suspicious weights do not match the cached canary: planted afresh
    for kwargs in ({"seed": 1}, {"config": CanaryConfig(**{**TINY_CANARY.to_dict(), "epochs": 11})}):
        with pytest.raises(AssertionError, match="planted again"):
            plant_canary(loaded, task.clean_train, validation=task.validation,
                         **{"config": TINY_CANARY, "seed": 0, **kwargs}, cache_dir=tmp_path)
    with torch.no_grad():
        changed = copy.deepcopy(loaded)
        next(changed.model.parameters()).add_(1e-3)
    with pytest.raises(AssertionError, match="planted again"):
        plant_canary(changed, task.clean_train, validation=task.validation, config=TINY_CANARY, seed=0,
                     cache_dir=tmp_path)


def test_canary_options_are_declared_and_built_like_every_other_config():
    from purify.errors import ConfigError

    built = CanaryConfig.from_dict({"epochs": "5", "lr": "3e-3", "target": "none", "family": "sentence"})
    assert (built.epochs, built.lr, built.target, built.family) == (5, 3e-3, None, "sentence")
    assert set(CanaryConfig.option_help()) == set(CanaryConfig().to_dict())  # every field has its help
    for bad, message in (({"epochs": 0}, "CanaryConfig.epochs must be >= 1"),
                         ({"poison_rate": 1.0}, "CanaryConfig.poison_rate must be > 0 and < 1"),
                         ({"family": "words"}, "CanaryConfig.family must be one of rare_tokens, sentence"),
                         ({"rate": 0.1}, "CanaryConfig has no option 'rate'; options: attempts")):
        with pytest.raises(ConfigError, match=message):
            CanaryConfig.from_dict(bad)
