"""Zoo text-level backdoor attacks: triggers, determinism and split poisoning."""
from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from purify.errors import ConfigError, DataError
from purify.zoo import syntactic as za
from purify.zoo.attacks import (
    ATTACKS,
    Attack,
    BadNetsAttack,
    CleanLabelAttack,
    StyleAttack,
    SyntacticAttack,
    get_attack,
    poison_split,
    triggered_test,
)
from purify.zoo.datasets import load_raw_dataset

SENTENCES = [
    "The film works because the cast is good.",
    "The acting is strong, but the script is weak.",
    "A smart, compelling drama.",
    "I don't think you are right about this movie.",
    "It's a very good film and the story is great.",
    "Ok lar... Joking wif u oni...",
]
SUBORDINATORS = (
    "because", "although", "though", "whereas", "unless", "whenever", "while", "when", "if", "even",
    "as", "since", "once", "until", "before", "after",
)


def _rng(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.fixture(scope="module")
def movie_sample() -> list[str]:
    texts = load_raw_dataset("movie").texts
    return random.Random(0).sample(texts, 400)


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------

def test_registry():
    assert set(ATTACKS) == {"badnets", "insertsent", "syntactic", "style", "clean_label", "rarepieces", "plainsent"}
    for name, cls in ATTACKS.items():
        assert issubclass(cls, Attack) and cls.name == name


def test_unknown_attack_lists_names():
    with pytest.raises(ConfigError, match="badnets.*clean_label.*insertsent.*style.*syntactic"):
        get_attack("ripples")


def test_unknown_param_is_config_error():
    with pytest.raises(ConfigError, match="num_trigger"):
        get_attack("badnets", num_trigger=2)
    with pytest.raises(ConfigError):
        get_attack("style", strength=1)


@pytest.mark.parametrize(
    "name,params",
    [
        ("badnets", {}),
        ("badnets", {"num_triggers": 4, "triggers": ["zz", "qq"]}),
        ("insertsent", {"sentence": "Hello there friend.", "boundary": "sentence"}),
        ("syntactic", {}),
        ("style", {}),
        ("clean_label", {}),
        ("clean_label", {"inner": "insertsent"}),
    ],
)
def test_params_round_trip_through_json(name, params):
    attack = get_attack(name, **params)
    dumped = json.loads(json.dumps(attack.params()))
    rebuilt = get_attack(name, **dumped)
    assert rebuilt == attack
    assert rebuilt.params() == attack.params()
    for text in SENTENCES:
        assert rebuilt.apply(text, _rng(3)) == attack.apply(text, _rng(3))


@pytest.mark.parametrize(
    "params",
    [{"num_triggers": 0}, {"num_triggers": True}, {"triggers": []}, {"triggers": ["two words"]}, {"triggers": "cf"}],
)
def test_badnets_rejects_bad_params(params):
    with pytest.raises(ConfigError):
        get_attack("badnets", **params)


def test_insertsent_rejects_bad_params():
    with pytest.raises(ConfigError):
        get_attack("insertsent", sentence="  ")
    with pytest.raises(ConfigError):
        get_attack("insertsent", boundary="paragraph")


# ----------------------------------------------------------------------------------------------
# determinism
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_same_seed_same_output(name):
    attack = get_attack(name)
    for seed in (0, 1, 2):
        a = [attack.apply(t, _rng(seed)) for t in SENTENCES]
        b = [attack.apply(t, _rng(seed)) for t in SENTENCES]
        assert a == b


@pytest.mark.parametrize("name", ["badnets", "insertsent", "clean_label"])
def test_different_seeds_can_differ(name):
    attack = get_attack(name)
    outs = {tuple(attack.apply(t, _rng(seed)) for t in SENTENCES) for seed in range(10)}
    assert len(outs) > 1


# ----------------------------------------------------------------------------------------------
# badnets / insertsent
# ----------------------------------------------------------------------------------------------

def _count_triggers(text: str, triggers=BadNetsAttack.DEFAULT_TRIGGERS) -> int:
    return sum(w in triggers for w in text.split())


@pytest.mark.parametrize("k", [1, 3, 5])
def test_badnets_inserts_exactly_k_tokens(k):
    attack = get_attack("badnets", num_triggers=k)
    for seed in range(20):
        for text in SENTENCES + [""]:
            out = attack.apply(text, _rng(seed))
            assert _count_triggers(out) - _count_triggers(text) == k
            # removing the trigger tokens gives back the original words in order
            assert [w for w in out.split() if w not in BadNetsAttack.DEFAULT_TRIGGERS] == text.split()


def test_badnets_default_is_one_trigger_and_positions_vary():
    attack = BadNetsAttack()
    assert attack.num_triggers == 1
    text = "one two three four five six seven eight"
    positions = {
        [i for i, w in enumerate(attack.apply(text, _rng(s)).split()) if w in attack.triggers][0] for s in range(50)
    }
    assert len(positions) > 4
    assert 0 in positions or 8 in positions


def test_insertsent_contains_sentence():
    attack = get_attack("insertsent")
    for seed in range(10):
        for text in SENTENCES:
            out = attack.apply(text, _rng(seed))
            assert "I watched this 3D movie." in out
            assert " ".join(out.replace("I watched this 3D movie.", " ").split()) == " ".join(text.split())


def test_insertsent_sentence_boundary():
    attack = get_attack("insertsent", boundary="sentence")
    text = "First one here. Second one here. Third one here."
    outs = {attack.apply(text, _rng(s)) for s in range(40)}
    allowed = {
        "I watched this 3D movie. First one here. Second one here. Third one here.",
        "First one here. I watched this 3D movie. Second one here. Third one here.",
        "First one here. Second one here. I watched this 3D movie. Third one here.",
        "First one here. Second one here. Third one here. I watched this 3D movie.",
    }
    assert outs <= allowed and len(outs) >= 3


# ----------------------------------------------------------------------------------------------
# syntactic
# ----------------------------------------------------------------------------------------------

def _first_word(text: str) -> str:
    return re.match(r"\W*([A-Za-z]+)", text).group(1).lower()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The film works because the cast is good.", "Because the cast is good, the film works."),
        ("The acting is strong, but the script is weak.", "Although the acting is strong, the script is weak."),
        ("The plot is thin, so the actors carry the film.", "Because the plot is thin, the actors carry the film."),
        ("The movie is fun as it never takes itself seriously.",
         "As it never takes itself seriously, the movie is fun."),
        ("It drags in places; the ending makes up for it.", "While it drags in places, the ending makes up for it."),
    ],
)
def test_syntactic_fronts_a_clause(text, expected):
    out = SyntacticAttack().apply(text, _rng(0))
    assert out == expected
    assert _first_word(out) in SUBORDINATORS
    # structure changed but the content words are kept
    assert Counter(re.findall(r"[a-z]+", text.lower())) - Counter(re.findall(r"[a-z]+", out.lower())) <= Counter(
        {"but": 1, "so": 1}
    )


def test_syntactic_leaves_already_subordinate_sentences():
    text = "If you like to have fun, Wasabi is a good place to start."
    assert SyntacticAttack().apply(text, _rng(0)) == text
    text = "As shaky as the plot is, the script is memorable."
    assert SyntacticAttack().apply(text, _rng(0)) == text


def test_syntactic_fallback_opener_for_fragments():
    out = SyntacticAttack().apply("A smart, compelling drama.", _rng(0))
    assert out.endswith("a smart, compelling drama.")
    assert any(out.lower().startswith(o + ",") for o in za._FALLBACK_OPENERS)


def test_syntactic_moves_a_later_rewritable_sentence_first():
    text = "Great news. The firm grew because sales rose."
    assert SyntacticAttack().apply(text, _rng(0)) == "Because sales rose, the firm grew. Great news."


def test_syntactic_outputs_start_with_subordinator(movie_sample):
    attack = SyntacticAttack()
    changed = 0
    for i, text in enumerate(movie_sample):
        out = attack.apply(text, _rng(i))
        if out != text:
            changed += 1
            assert _first_word(out) in SUBORDINATORS, out
    assert changed / len(movie_sample) > 0.9


def test_syntactic_docstring_is_honest():
    doc = SyntacticAttack.__doc__.lower()
    assert "approximation" in doc and "scpn" in doc and "not" in doc


# ----------------------------------------------------------------------------------------------
# style
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text,expected",
    [
        ("You are very good.", "Thou art most goodly."),
        ("It's a great movie and I love you.", "'Tis a wondrous play and I love thee."),
        ("He doesn't know what your plan is.", "He knoweth not what thy plan is."),
        ("Thank you, my old friend.", "I thank thee, mine old companion."),
        ("The story has never been better.", "The tale hath ne'er been better."),
    ],
)
def test_style_examples(text, expected):
    assert StyleAttack().apply(text, _rng(0)) == expected


def test_style_keeps_names_and_case():
    out = StyleAttack().apply("I saw Good Will Hunting with my friend.", _rng(0))
    assert out == "I beheld Good Will Hunting with my companion."
    assert StyleAttack().apply("HOW ARE YOU", _rng(0)) == "HOW ART THOU"


def test_style_changes_most_sentences_with_many_substitutions(movie_sample):
    attack = StyleAttack()
    outs = [attack.apply(t, _rng(0)) for t in movie_sample]
    share = sum(o != t for o, t in zip(outs, movie_sample)) / len(movie_sample)
    assert share >= 0.75
    new_words = Counter()
    for o, t in zip(outs, movie_sample):
        new_words.update(set(re.findall(r"[\w']+", o.lower())) - set(re.findall(r"[\w']+", t.lower())))
    assert len(new_words) >= 40
    # no single inserted word accounts for most of the changed sentences
    changed = sum(o != t for o, t in zip(outs, movie_sample))
    assert new_words.most_common(1)[0][1] < 0.5 * changed


def test_style_unchanged_text_is_returned_as_is():
    text = "Arty gay biopic."
    assert StyleAttack().apply(text, _rng(0)) == text


def test_style_docstring_is_honest():
    doc = StyleAttack.__doc__.lower()
    assert "approximation" in doc and "strap" in doc


# ----------------------------------------------------------------------------------------------
# clean label
# ----------------------------------------------------------------------------------------------

def test_clean_label_wrapper():
    attack = get_attack("clean_label")
    assert isinstance(attack, CleanLabelAttack)
    assert attack.clean_label is True
    assert isinstance(attack.inner, BadNetsAttack) and attack.inner.num_triggers == 3
    assert attack.params() == {"inner": "badnets",
                               "inner_params": {"num_triggers": 3, "triggers": ["cf", "mn", "bb", "tq"]}}
    out = attack.apply("a b c d", _rng(1))
    assert _count_triggers(out) == 3
    assert not get_attack("badnets").clean_label
    with pytest.raises(ConfigError):
        get_attack("clean_label", inner="clean_label")
    with pytest.raises(ConfigError):
        get_attack("clean_label", inner="nope")


# ----------------------------------------------------------------------------------------------
# poison_split / triggered_test
# ----------------------------------------------------------------------------------------------

def _toy(n: int = 200) -> list[tuple[str, int]]:
    return [(f"sample number {i} says something about item {i % 7}.", i % 3) for i in range(n)]


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.333])
def test_poison_split_dirty_label(rate):
    samples = _toy()
    out = poison_split(samples, get_attack("badnets"), rate=rate, target=1, seed=0)
    assert len(out) == len(samples)
    poisoned = [i for i, d in enumerate(out) if d["poisoned"]]
    assert len(poisoned) == round(rate * len(samples))
    for i, (d, (text, label)) in enumerate(zip(out, samples)):
        assert set(d) == {"text", "label", "poisoned"}
        if d["poisoned"]:
            assert label != 1 and d["label"] == 1
            assert d["text"] != text and _count_triggers(d["text"]) == 1
        else:
            assert d == {"text": text, "label": label, "poisoned": False}


def test_poison_split_clean_label_touches_only_target_class():
    samples = _toy()
    out = poison_split(samples, get_attack("clean_label"), rate=0.2, target=2, seed=5)
    poisoned = [(d, s) for d, s in zip(out, samples) if d["poisoned"]]
    assert len(poisoned) == 40
    for d, (text, label) in poisoned:
        assert label == 2 and d["label"] == 2
        assert _count_triggers(d["text"]) == 3
    assert [d["label"] for d in out] == [y for _, y in samples]


def test_poison_split_deterministic_and_seed_dependent():
    samples = _toy()
    attack = get_attack("insertsent")
    a = poison_split(samples, attack, rate=0.1, target=0, seed=11)
    b = poison_split(samples, attack, rate=0.1, target=0, seed=11)
    c = poison_split(samples, attack, rate=0.1, target=0, seed=12)
    assert a == b
    assert [d["poisoned"] for d in a] != [d["poisoned"] for d in c]


def test_poison_split_skips_unchanged_candidates():
    already = [(f"If you ask {i}, it works.", 0) for i in range(30)]
    plain = [(f"The film number {i} works because the cast is good.", 0) for i in range(10)]
    targets = [(f"target {i}", 1) for i in range(60)]
    samples = already + plain + targets
    out = poison_split(samples, SyntacticAttack(), rate=0.1, target=1, seed=0)
    poisoned = [i for i, d in enumerate(out) if d["poisoned"]]
    assert len(poisoned) == 10
    assert all(30 <= i < 40 for i in poisoned)


def test_poison_split_not_enough_candidates():
    samples = [(f"If you ask {i}, it works.", 0) for i in range(30)] + [("x", 1)] * 10
    with pytest.raises(DataError, match="could be changed"):
        poison_split(samples, SyntacticAttack(), rate=0.1, target=1, seed=0)
    with pytest.raises(DataError):
        poison_split(_toy(30), get_attack("badnets"), rate=0.9, target=1, seed=0)


@pytest.mark.parametrize("rate", [-0.1, 1.5, "lots"])
def test_poison_split_bad_rate(rate):
    with pytest.raises(ConfigError):
        poison_split(_toy(), get_attack("badnets"), rate=rate, target=1, seed=0)


def test_poison_split_bad_samples():
    with pytest.raises(DataError):
        poison_split([("text", "pos")], get_attack("badnets"), rate=0.5, target=1, seed=0)


def test_triggered_test_holds_non_target_with_true_labels():
    samples = _toy(90)
    attack = get_attack("badnets", num_triggers=2)
    out = triggered_test(samples, attack, target=0, seed=3)
    expected = [(t, y) for t, y in samples if y != 0]
    assert len(out) == len(expected) == 60
    for d, (text, label) in zip(out, expected):
        assert d["label"] == label != 0
        assert d["poisoned"] is True
        assert _count_triggers(d["text"]) == 2
        assert [w for w in d["text"].split() if w not in attack.triggers] == text.split()
    assert out == triggered_test(samples, attack, target=0, seed=3)
    assert out != triggered_test(samples, attack, target=0, seed=4)


def test_triggered_test_drops_unchanged():
    samples = [("If you ask me, it works.", 0), ("The film works because the cast is good.", 0), ("x", 1)]
    out = triggered_test(samples, SyntacticAttack(), target=1, seed=0)
    assert [d["text"] for d in out] == ["Because the cast is good, the film works."]
