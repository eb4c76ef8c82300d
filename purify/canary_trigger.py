"""How a canary trigger is drawn: rare whole-word tokens, or a sentence of them, that the clean data never says.

The zoo's BadNets tokens (cf, mn, bb, tq) and the words of its InsertSent sentence are never drawn: the canary
must not be the very trigger a zoo model carries.
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence

from .errors import CanaryError, ConfigError
from .zoo.attacks import Attack, BadNetsAttack, InsertSentAttack

FAMILIES = ("rare_tokens", "sentence")
#: words a canary never uses: the zoo's BadNets tokens and the words of its InsertSent sentence
RESERVED_WORDS = frozenset(BadNetsAttack.DEFAULT_TRIGGERS) | frozenset(
    re.findall(r"[a-z0-9]+", InsertSentAttack.DEFAULT_SENTENCE.lower()))
_WORD = re.compile(r"[a-z0-9']+")


def data_words(texts: Sequence[str]) -> set[str]:
    """Lower-cased words of the texts (what a canary word must not be)."""
    words: set[str] = set()
    for text in texts:
        words.update(_WORD.findall(text.lower()))
    return words


def vocabulary_words(tokenizer, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Whole-word vocabulary entries (lower-case ASCII letters, 3 to 12 long), in vocabulary-id order.

    WordPiece continuations (``##x``) and special tokens are skipped; a leading word-start marker (GPT-2's ``Ġ``,
    SentencePiece's ``▁``) is stripped. Later ids are rarer in WordPiece and BPE vocabularies.
    """
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    seen: set[str] = set()
    words = []
    for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if token in specials or token.startswith("##"):
            continue
        word = token[1:] if token[:1] in ("Ġ", "▁") else token
        if not (3 <= len(word) <= 12 and word.isascii() and word.isalpha() and word.islower()):
            continue
        if word in exclude or word in RESERVED_WORDS or word in seen:
            continue
        seen.add(word)
        words.append(word)
    return words


def is_single_token_word(tokenizer, word: str) -> bool:
    """True when `word`, written after another word, is exactly one known token (a whole-word token)."""
    base = tokenizer.tokenize("a")
    pieces = tokenizer.tokenize("a " + word)
    unk = getattr(tokenizer, "unk_token", None)
    return len(pieces) == len(base) + 1 and pieces[:len(base)] == base and pieces[-1] != unk


def _draw(tokenizer, pool: Sequence[str], k: int, rng: random.Random, taken: Sequence[str] = ()) -> list[str]:
    """Up to `k` random single-token words from `pool` (checked lazily, in a seeded random order)."""
    order = [w for w in pool if w not in taken]
    rng.shuffle(order)
    out: list[str] = []
    for word in order:
        if len(out) == k:
            break
        if is_single_token_word(tokenizer, word):
            out.append(word)
    return out


def draw_trigger(tokenizer, family: str, avoid: set[str], rng: random.Random, *, num_tokens: int = 3,
                 sentence_words: int = 5) -> tuple[list[str], Attack]:
    """A random canary trigger of `family` whose words are absent from `avoid` (the clean data's words).

    rare_tokens: `num_tokens` whole-word tokens from the rarer half of the vocabulary (the rest if too few).
    sentence: `sentence_words` whole-word tokens from the whole vocabulary, capitalised with a full stop when the
    tokenizer knows those forms.
    """
    pool = vocabulary_words(tokenizer, exclude=avoid)
    if family == "rare_tokens":
        words = _draw(tokenizer, pool[len(pool) // 2:], num_tokens, rng)
        if len(words) < num_tokens:
            words += _draw(tokenizer, pool[:len(pool) // 2], num_tokens - len(words), rng, words)
        if not words:
            raise CanaryError("no whole-word vocabulary token is absent from the clean data; cannot draw a "
                              "rare-token canary (try --canary sentence)")
        return words, BadNetsAttack(num_triggers=1, triggers=words)
    if family == "sentence":
        words = _draw(tokenizer, pool, sentence_words, rng)
        if len(words) < 2:
            raise CanaryError("fewer than two whole-word vocabulary tokens are absent from the clean data; cannot "
                              "draw a sentence canary (try --canary rare_tokens)")
        sentence = " ".join(words)
        natural = sentence[0].upper() + sentence[1:] + "."
        unk = getattr(tokenizer, "unk_token", None)
        if unk is None or unk not in tokenizer.tokenize(natural):
            sentence = natural
        return [sentence], InsertSentAttack(sentence=sentence, boundary="word")
    raise ConfigError(f"canary family must be one of {', '.join(FAMILIES)}, not {family!r}")
