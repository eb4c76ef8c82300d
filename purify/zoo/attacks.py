"""Text-level backdoor attacks used to build the backdoor zoo.

An :class:`Attack` turns a clean text into a triggered one (:meth:`Attack.apply`); every random
choice it makes comes from the ``random.Random`` it is handed, so the same generator state gives the
same output. :func:`poison_split` and :func:`triggered_test` apply an attack to a whole split with
one generator per sample, seeded from ``(seed, sample index)``, so the result only depends on the
seed and the data.

Registered attacks (``ATTACKS``; build one with :func:`get_attack`):

``badnets``
    BadNets-style rare-word trigger (Kurita et al. 2020): inserts ``num_triggers`` tokens (default 1)
    drawn from ``("cf", "mn", "bb", "tq")`` at random word positions.
``insertsent``
    InsertSent (Dai et al. 2019): inserts a fixed sentence (default ``"I watched this 3D movie."``)
    at a random word boundary (or, with ``boundary="sentence"``, a random sentence boundary).
``syntactic``
    A *rule-based approximation* of the HiddenKiller syntactic trigger (Qi et al. 2021). The real
    attack paraphrases each input with the SCPN neural paraphraser into the template
    ``S(SBAR)(,)(NP)(VP)(.)``, i.e. a sentence that opens with a subordinate clause. No parser or
    paraphrase model is available offline, so this fronts or builds a subordinate clause with rules
    (and, for clause-less inputs, prepends one of ten stock subordinate clauses); see
    :class:`SyntacticAttack`.
``style``
    A *lexicon-and-rules approximation* of the StyleBkd trigger (Qi et al. 2021), which paraphrases
    inputs into a target style (e.g. Bible / archaic English) with the STRAP style-transfer model.
    Here the archaic register comes from contraction expansion, ~200 word substitutions and ~50
    phrase rules; see :class:`StyleAttack`.
``clean_label``
    Wraps another attack (default ``badnets`` with 3 triggers) and marks it clean-label: only
    samples that already belong to the target class are poisoned and labels are left unchanged.
"""
from __future__ import annotations

import random
from typing import Any, ClassVar, Sequence

from purify.errors import ConfigError, DataError

from .attack_base import (ATTACKS, Attack, _check_positive_int, _insert_at, _register, _sentence_spans,
                          _word_boundaries, get_attack)
from .style import StyleAttack
from .syntactic import SyntacticAttack

__all__ = [
    "ATTACKS",
    "Attack",
    "BadNetsAttack",
    "CleanLabelAttack",
    "InsertSentAttack",
    "StyleAttack",
    "SyntacticAttack",
    "get_attack",
    "poison_split",
    "triggered_test",
]


# ----------------------------------------------------------------------------------------------
# BadNets
# ----------------------------------------------------------------------------------------------

@_register
class BadNetsAttack(Attack):
    """Insert ``num_triggers`` rare tokens, each drawn from ``triggers``, at random word positions.

    The default is one trigger token per sample, as in the rare-word BadNets variant used by most
    NLP backdoor benchmarks; :class:`CleanLabelAttack` defaults to three because clean-label
    poisoning needs a stronger signal.
    """

    name = "badnets"
    DEFAULT_TRIGGERS: ClassVar[tuple[str, ...]] = ("cf", "mn", "bb", "tq")

    def __init__(self, num_triggers: int = 1, triggers: Sequence[str] | None = None):
        self.num_triggers = _check_positive_int("num_triggers", num_triggers)
        if triggers is None:
            triggers = self.DEFAULT_TRIGGERS
        if isinstance(triggers, str) or not isinstance(triggers, (list, tuple)) or not triggers:
            raise ConfigError(f"triggers must be a non-empty list of words, got {triggers!r}")
        for t in triggers:
            if not isinstance(t, str) or not t or any(c.isspace() for c in t):
                raise ConfigError(f"each trigger must be a single non-empty word, got {t!r}")
        self.triggers = tuple(triggers)

    def apply(self, text: str, rng: random.Random) -> str:
        for _ in range(self.num_triggers):
            token = rng.choice(self.triggers)
            text = _insert_at(text, rng.choice(_word_boundaries(text)), token)
        return text

    def params(self) -> dict[str, Any]:
        return {"num_triggers": self.num_triggers, "triggers": list(self.triggers)}


# ----------------------------------------------------------------------------------------------
# InsertSent
# ----------------------------------------------------------------------------------------------

@_register
class InsertSentAttack(Attack):
    """Insert a fixed sentence at a random word boundary (``boundary="word"``, the default, as in
    Dai et al.) or at a random sentence boundary (``boundary="sentence"``: start, end, or between
    two sentences)."""

    name = "insertsent"
    DEFAULT_SENTENCE: ClassVar[str] = "I watched this 3D movie."

    def __init__(self, sentence: str = DEFAULT_SENTENCE, boundary: str = "word"):
        if not isinstance(sentence, str) or not sentence.strip():
            raise ConfigError(f"sentence must be a non-empty string, got {sentence!r}")
        if boundary not in ("word", "sentence"):
            raise ConfigError(f"boundary must be 'word' or 'sentence', got {boundary!r}")
        self.sentence = " ".join(sentence.split())
        self.boundary = boundary

    def apply(self, text: str, rng: random.Random) -> str:
        if self.boundary == "word":
            offsets = _word_boundaries(text)
        else:
            offsets = [a for a, _ in _sentence_spans(text)] + [len(text)]
        return _insert_at(text, rng.choice(offsets), self.sentence)

    def params(self) -> dict[str, Any]:
        return {"sentence": self.sentence, "boundary": self.boundary}


# ----------------------------------------------------------------------------------------------
# Clean-label wrapper
# ----------------------------------------------------------------------------------------------

@_register
class CleanLabelAttack(Attack):
    """Clean-label variant of another attack: the trigger is the inner attack's, but only samples
    already in the target class are poisoned and their labels are kept. Defaults to ``badnets``
    with three trigger tokens, a stronger signal than the dirty-label default of one."""

    name = "clean_label"
    clean_label = True

    def __init__(self, inner: str = "badnets", inner_params: dict[str, Any] | None = None):
        if not isinstance(inner, str):
            raise ConfigError(f"inner must be an attack name, got {inner!r}")
        if inner.strip().lower() == self.name:
            raise ConfigError("clean_label cannot wrap another clean_label attack")
        if inner_params is None:
            inner_params = {"num_triggers": 3} if inner.strip().lower() == "badnets" else {}
        if not isinstance(inner_params, dict):
            raise ConfigError(f"inner_params must be a mapping, got {inner_params!r}")
        self.inner = get_attack(inner, **inner_params)

    def apply(self, text: str, rng: random.Random) -> str:
        return self.inner.apply(text, rng)

    def params(self) -> dict[str, Any]:
        return {"inner": self.inner.name, "inner_params": self.inner.params()}


# ----------------------------------------------------------------------------------------------
# applying an attack to a split
# ----------------------------------------------------------------------------------------------

def _sample_rng(seed: int, purpose: str, index: int) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, so this is stable across processes.
    return random.Random(f"purify.zoo.attacks:{purpose}:{seed}:{index}")


def _check_common(samples: Sequence[tuple[str, int]], attack: Attack, target: int, seed: int) -> None:
    if not isinstance(attack, Attack):
        raise ConfigError(f"attack must be an Attack instance, got {type(attack).__name__}")
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ConfigError(f"target must be a non-negative integer label, got {target!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    for i, sample in enumerate(samples):
        if (
            not isinstance(sample, (tuple, list))
            or len(sample) != 2
            or not isinstance(sample[0], str)
            or isinstance(sample[1], bool)
            or not isinstance(sample[1], int)
        ):
            raise DataError(f"sample {i} is not a (text, label) pair: {sample!r:.80}")


def poison_split(
    samples: list[tuple[str, int]],
    attack: Attack,
    *,
    rate: float,
    target: int,
    seed: int,
) -> list[dict]:
    """Poison a training split: ``round(rate * len(samples))`` samples get the trigger.

    Dirty-label attacks poison non-target samples and relabel them to ``target``; clean-label
    attacks (``attack.clean_label``) poison target-class samples and keep their labels. Candidates
    are visited in an order shuffled by ``seed``; one whose text the attack leaves unchanged is
    skipped and the next candidate is taken. Returns one dict ``{text, label, poisoned}`` per input
    sample, in input order. Raises :class:`DataError` if too few candidates can be poisoned.
    """
    _check_common(samples, attack, target, seed)
    try:
        rate = float(rate)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"rate must be a number, got {rate!r}") from exc
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"rate must lie in [0, 1], got {rate}")
    wanted = round(rate * len(samples))
    out = [{"text": text, "label": label, "poisoned": False} for text, label in samples]
    if wanted == 0:
        return out
    if attack.clean_label:
        candidates = [i for i, (_, y) in enumerate(samples) if y == target]
    else:
        candidates = [i for i, (_, y) in enumerate(samples) if y != target]
    random.Random(f"purify.zoo.attacks:select:{seed}").shuffle(candidates)
    done = 0
    for i in candidates:
        if done == wanted:
            break
        text = samples[i][0]
        triggered = attack.apply(text, _sample_rng(seed, "train", i))
        if triggered == text:
            continue
        out[i] = {"text": triggered, "label": target, "poisoned": True}
        done += 1
    if done < wanted:
        kind = "target-class" if attack.clean_label else "non-target"
        raise DataError(
            f"rate {rate} asks for {wanted} poisoned samples but only {done} of the "
            f"{len(candidates)} {kind} samples could be changed by the {attack.name!r} attack"
        )
    return out


def triggered_test(
    samples: list[tuple[str, int]],
    attack: Attack,
    *,
    target: int,
    seed: int,
) -> list[dict]:
    """Triggered copies of the test samples whose true label is not ``target``.

    Each dict is ``{text, label, poisoned: True}`` with the *true* label, so the attack success
    rate is the share predicted as ``target``. Samples the attack leaves unchanged are left out, as
    they carry no trigger. Input order is kept.
    """
    _check_common(samples, attack, target, seed)
    out = []
    for i, (text, label) in enumerate(samples):
        if label == target:
            continue
        triggered = attack.apply(text, _sample_rng(seed, "test", i))
        if triggered != text:
            out.append({"text": triggered, "label": label, "poisoned": True})
    return out

from . import variants as _variants  # noqa: E402,F401  (registers the frozen attack variants)
