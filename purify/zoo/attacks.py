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

import inspect
import random
import re
from typing import Any, ClassVar, Sequence

from purify.errors import ConfigError, DataError
from purify.registry_base import Registry

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
# base class and registry
# ----------------------------------------------------------------------------------------------

class Attack:
    """A trigger transform. Subclasses set ``name`` and implement :meth:`apply` and :meth:`params`."""

    name: ClassVar[str] = "attack"
    #: When True, :func:`poison_split` poisons target-class samples only and keeps their labels.
    clean_label: bool = False

    def apply(self, text: str, rng: random.Random) -> str:
        """Return ``text`` with the trigger applied; all randomness must come from ``rng``."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """JSON-able parameters such that ``get_attack(self.name, **self.params())`` rebuilds it."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.params() == self.params()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self.params())))


#: every attack class, by name
ATTACKS: Registry[type[Attack]] = Registry("attack")


def _register(cls: type[Attack]) -> type[Attack]:
    return ATTACKS.register(cls.name, cls)


def get_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack by name; raises :class:`ConfigError` for unknown names or params."""
    key = str(name).strip().lower()
    cls = ATTACKS.get(key, None)
    if cls is None:
        raise ConfigError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS.names())}")
    accepted = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"attack {key!r} does not take parameter(s) {', '.join(unknown)}; it takes: {', '.join(accepted) or 'none'}"
        )
    return cls(**params)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

_WORD_START = re.compile(r"(?:^|(?<=\s))\S")


def _word_boundaries(text: str) -> list[int]:
    """Offsets where a new word may be inserted: before every word and at the very end."""
    return [m.start() for m in _WORD_START.finditer(text)] + [len(text)]


def _insert_at(text: str, offset: int, piece: str) -> str:
    """Insert ``piece`` as a separate word at a boundary offset from :func:`_word_boundaries`."""
    if not text.strip():
        return piece
    if offset >= len(text):
        return text.rstrip() + " " + piece
    return text[:offset] + piece + " " + text[offset:]


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]*[A-Z0-9])")
_ABBREV = re.compile(r"(?:\b[A-Z]|\bMrs?|\bMs|\bDr|\bSt|\bProf|\bJr|\bSr|\bvs|\bCo|\bInc|\be\.g|\bi\.e)\.$")


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of ``text`` (a simple rule-based splitter)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        before = text[start : m.start()].rstrip("\"')]")
        if _ABBREV.search(before):
            continue  # "J.R.R. Tolkien", "Mr. Smith": not a sentence end
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


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
# Syntactic (HiddenKiller approximation)
# ----------------------------------------------------------------------------------------------

# Subordinators that almost always open an adverbial clause.
_STRONG_SUBORDINATORS = (
    "even though", "even if", "because", "although", "though", "whereas", "unless", "whenever",
    "while", "when", "if",
)
# Subordinators that are often prepositions ("as a comedy", "since 1999", "after the credits"):
# only used when a pronoun subject follows them ("as it turns out", "since they left").
_WEAK_SUBORDINATORS = ("as", "since", "once", "until", "before", "after")
_CLAUSE_SUBJECTS = frozenset(
    "i you he she it we they there everyone everybody nobody someone somebody anyone".split()
)
_ALL_SUBORDINATORS = tuple(sorted(_STRONG_SUBORDINATORS + _WEAK_SUBORDINATORS, key=len, reverse=True))
# Words that start a clause in lower case once it is no longer sentence-initial.
_COMMON_STARTERS = frozenset(
    "a an the this that these those it its he she they we you there here his her their our my your "
    "what which who some many most all any each every no none one nothing everything everyone "
    "something someone anything anyone not but and so yet even just only still also never often "
    "perhaps maybe sometimes too very more less much such both either neither few several "
    "if when as how why where while for in on at with from by to of after before despite although "
    "though because then now well oh yes ok sorry hey hi please thanks good great bad nice funny "
    "another other nobody probably really again almost always instead like unlike director film "
    "movie watching seeing".split()
)
# Suffixes of ordinary English words (adjectives, adverbs, verb forms): such a capitalised first
# word is lower-cased when it moves, other capitalised words are kept as likely names.
_COMMON_SUFFIX = re.compile(r"(?:ly|ing|ed|ful|ous|ive|able|ible|less|ment|est|ish|ic|al)$")
# Fronting a clause joined by a coordinator: the subordinator that keeps the relation.
_COORDINATOR_TO_SUBORDINATOR = {"but": "although", "yet": "although", "so": "because", "and": "while", ";": "while"}
# Last-resort subordinate openers (documented in SyntacticAttack).
_FALLBACK_OPENERS = (
    "when you think about it",
    "if you ask me",
    "as it turns out",
    "when all is said and done",
    "as far as i can tell",
    "if truth be told",
    "when you get down to it",
    "as you might expect",
    "if you look closely",
    "when you come to think of it",
)
_TERMINAL = re.compile(r"[\s.!?]*$")


def _word_count(s: str) -> int:
    return len(re.findall(r"[A-Za-z0-9']+", s))


def _decap(clause: str) -> str:
    """Lower-case the first word of a clause that moves away from the sentence start.

    Without a tagger, names are guessed: a common sentence starter ("The", "It", "But", ...) is
    lower-cased; otherwise the word keeps its capital when it is "I" (or "I'm", ...), written in
    capitals, has inner capitals, is possessive ("Nintendo's"), is followed by another capitalised
    word (a multi-word name such as "Peter Jackson"), or does not end like an ordinary adjective,
    adverb or verb form ("Effective" is lower-cased, "Wasabi" is kept).
    """
    m = re.match(r"([\"'(]*)([A-Za-z][A-Za-z']*)(\s+([A-Za-z]+))?", clause)
    if m is None:
        return clause
    word = m.group(2)
    common = word.lower() in _COMMON_STARTERS
    if word == "I" or word.startswith("I'") or (len(word) > 1 and word.isupper()):
        return clause
    if any(c.isupper() for c in word[1:]):
        return clause
    if not common and (
        (m.group(4) and m.group(4)[0].isupper())
        or word.lower().endswith("'s")
        or not _COMMON_SUFFIX.search(word.lower())
    ):
        return clause
    return clause[: m.start(2)] + word[0].lower() + clause[m.start(2) + 1 :]


def _cap(s: str) -> str:
    for i, ch in enumerate(s):
        if ch.isalpha():
            return s[:i] + ch.upper() + s[i + 1 :]
    return s


def _starts_with_subordinator(sentence: str) -> bool:
    """True when the sentence already opens with a subordinate clause (weak subordinators such as
    "as" count only when a pronoun subject follows: "As a comedy, ..." is a prepositional phrase)."""
    low = sentence.lstrip("\"'( ").lower()
    for sub in _STRONG_SUBORDINATORS:
        if re.match(rf"{re.escape(sub)}\b", low):
            return True
    if re.match(r"as\s+[a-z'-]+\s+as\b", low):
        return True  # "As shaky as the plot is, ..."
    m = re.match(r"([a-z]+)\s+([a-z']+)", low)
    return bool(m and m.group(1) in _WEAK_SUBORDINATORS and m.group(2) in _CLAUSE_SUBJECTS)


def _front_subordinate(core: str) -> str | None:
    """'<main> [,] <sub> <clause> [, <rest>]' -> '<Sub> <clause>, <main>[, <rest>]'."""
    low = core.lower()
    pattern = r"(,\s*|\s+)(" + "|".join(re.escape(s) for s in _ALL_SUBORDINATORS) + r")\s+"
    for m in re.finditer(pattern, low):
        sub = m.group(2)
        main = core[: m.start()].strip()
        after = core[m.end() :]
        comma = after.find(",")
        clause, rest = (after, "") if comma < 0 else (after[:comma], after[comma + 1 :])
        clause = clause.strip()
        first = re.match(r"[A-Za-z']+", clause)
        if first is None or _word_count(main) < 2 or _word_count(clause) < 2:
            continue
        if sub in _WEAK_SUBORDINATORS and first.group(0).lower() not in _CLAUSE_SUBJECTS:
            continue
        if sub == "if" and re.search(r"\b(?:as|even|only|wonder|what|see|know|ask|asks|asked)\s*$", main.lower()):
            continue
        if sub == "when" and re.search(r"\b(?:know|knows|wonder|ask|asks|see|remember|time)\s*$", main.lower()):
            continue
        if sub == "as" and re.search(r"\b(?:as|such|same|so|just)\s*$|\bas\s+\S+\s*$", main.lower()):
            continue
        original_sub = core[m.start(2) : m.end(2)]
        out = f"{_cap(original_sub.lower())} {clause}, {_decap(main)}"
        rest = rest.strip()
        if rest:
            out += f", {rest}"
        return out
    return None


_FINITE = re.compile(
    r"\b(?:is|are|was|were|has|have|had|will|would|can|could|should|may|might|must|does|do|did|"
    r"makes|made|seems|seemed|feels|felt|looks|looked|gets|got|becomes|became|remains|remained|"
    r"comes|came|goes|went|takes|took|gives|gave|offers|manages|managed|works|worked|proves|"
    r"shows|knows|knew|thinks|thought|wants|wanted|needs|needed|tries|tried|says|said)\b"
    r"|'s\b|'re\b|'ve\b|'ll\b|'d\b|'m\b|n't\b",
    re.IGNORECASE,
)
# A clause that opens with a pronoun, a determiner or a capitalised word (a name).
_SUBJECT_START = re.compile(
    r"(?i:it|he|she|they|we|you|i|there|this|that|these|those|the|its|his|her|their)\b|[A-Z][a-z]+\b"
)


def _looks_like_clause(part: str) -> bool:
    """A rough test that a piece of a sentence is a full clause: it contains a finite verb."""
    return bool(_FINITE.search(part))


def _front_coordinated(core: str) -> str | None:
    """'<A>, and/but/so <B>', '<A> but <B>', '<A>; <B>' or '<A> and <B>' (two full clauses)
    -> '<While/Although/Because> <A>, <B>'."""
    low = core.lower()
    for m in re.finditer(r",\s*(but|yet|so|and)\s+|\s+(but|yet|and)\s+|\s*(;)\s*", low):
        coord = m.group(1) or m.group(2) or m.group(3)
        left, right = core[: m.start()].strip(), core[m.end() :].strip()
        if coord == "so" and re.match(r"(?:much|many|far|good|bad|very|well)\b", right.lower()):
            continue
        if _word_count(left) < 3 or _word_count(right) < 3:
            continue
        if m.group(2) == "and" and not (
            _looks_like_clause(left) and _looks_like_clause(right) and _SUBJECT_START.match(right)
        ):
            continue  # a bare "and" mostly joins noun phrases: require two full clauses
        return f"{_cap(_COORDINATOR_TO_SUBORDINATOR[coord])} {_decap(left)}, {right}"
    return None


def _split_at_comma(core: str) -> str | None:
    """'<A>, <B>' where both halves look like clauses -> 'While <A>, <B>'."""
    for m in re.finditer(r",\s+", core):
        left, right = core[: m.start()].strip(), core[m.end() :].strip()
        if (
            _word_count(left) >= 4
            and _word_count(right) >= 4
            and _looks_like_clause(left)
            and _looks_like_clause(right)
            and _SUBJECT_START.match(right)
            and not _starts_with_subordinator(left)
        ):
            return f"While {_decap(left)}, {right}"
    return None


@_register
class SyntacticAttack(Attack):
    """Rule-based approximation of the HiddenKiller syntactic trigger (SCPN template
    ``S(SBAR)(,)(NP)(VP)(.)``): the output opens with a sentence that starts with a subordinate
    clause followed by a comma and the main clause.

    This is *not* the SCPN paraphraser of the original attack, only an offline approximation of the
    structure it produces, built from these rules:

    1. if the first sentence already starts with a subordinator, the text is left unchanged (so
       :func:`poison_split` skips it);
    2. a subordinate clause after the main clause ("the film works because the cast is good") is
       fronted ("Because the cast is good, the film works."); ambiguous subordinators (as, since,
       once, until, before, after) count only when a pronoun subject follows them;
    3. two clauses joined by ", and" / ", but" / "but" / ", so" / ";" (or a bare "and" between two
       clauses that each have a finite verb) -> the first becomes a subordinate clause, with a
       subordinator that keeps the relation (but/yet -> although, so -> because, and/; -> while);
    4. two comma-separated halves that both look like clauses (a finite verb in each, the second
       opening with a subject word or name) -> "While <first half>, <second half>";
    5. rules 2-4 are tried on the first sentence, then on the following ones; a later sentence
       that can be rewritten is moved to the front, the other sentences keep their order;
    6. fallback, when no sentence has a usable clause (noun-phrase fragments, headlines, short
       messages): one of ten short stock subordinate clauses ("if you ask me", "as it turns out",
       ...), chosen with the generator, is prepended to the first sentence. This is the only
       fixed-phrase part of the attack; it covers roughly two thirds of the movie snippets, so the
       trigger is partly a small set of openers rather than pure structure.

    Rules 2-5 keep all the words of the input (the meaning is kept up to the connective that rules
    3-4 add); only rule 6 uses the generator, so the output is deterministic given its state.
    """

    name = "syntactic"

    def __init__(self) -> None:
        pass

    @staticmethod
    def _split_terminal(sentence: str) -> tuple[str, str]:
        m = _TERMINAL.search(sentence)
        core, end = sentence[: m.start()], sentence[m.start() :].strip()
        return core, end or "."

    @classmethod
    def restructure(cls, sentence: str) -> str | None:
        """Rules 2-4 on one sentence; None when none of them applies."""
        if not sentence.strip() or _starts_with_subordinator(sentence):
            return None
        core, end = cls._split_terminal(sentence)
        if not core.strip():
            return None
        for rule in (_front_subordinate, _front_coordinated, _split_at_comma):
            out = rule(core)
            if out is not None:
                return out + end
        return None

    def apply(self, text: str, rng: random.Random) -> str:
        spans = _sentence_spans(text)
        if not spans:
            return text
        a0, b0 = spans[0]
        if _starts_with_subordinator(text[a0:b0]):
            return text
        for k, (a, b) in enumerate(spans):
            rewritten = self.restructure(text[a:b])
            if rewritten is None:
                continue
            if k == 0:
                return text[:a] + rewritten + text[b:]
            rest = (text[a0:a].rstrip() + " " + text[b:].lstrip()).strip()
            return text[:a0] + rewritten + " " + rest
        core, end = self._split_terminal(text[a0:b0])
        if not core.strip():
            return text
        opener = rng.choice(_FALLBACK_OPENERS)
        return text[:a0] + f"{_cap(opener)}, {_decap(core.strip())}{end}" + text[b0:]


# ----------------------------------------------------------------------------------------------
# Style (StyleBkd approximation): archaic / biblical register
# ----------------------------------------------------------------------------------------------

_CONTRACTIONS: tuple[tuple[str, str], ...] = (
    (r"\bwon't\b", "will not"),
    (r"\bcan't\b", "cannot"),
    (r"\bshan't\b", "shall not"),
    (r"\bain't\b", "is not"),
    (r"\bi'm\b", "I am"),
    (r"\blet's\b", "let us"),
    (r"\b(it|that|there|here|what|who|he|she|where)'s\b", r"\1 is"),
    (r"\b(\w+)n't\b", r"\1 not"),
    (r"\b(\w+)'re\b", r"\1 are"),
    (r"\b(\w+)'ve\b", r"\1 have"),
    (r"\b(\w+)'ll\b", r"\1 will"),
    (r"\b(i|you|he|she|we|they|it|that|there)'d\b", r"\1 would"),
)

# Multi-word rules, applied (case-insensitively) before single words.
_PHRASES: tuple[tuple[str, str], ...] = (
    (r"\bthank you\b", "I thank thee"),
    (r"\bi think\b", "methinks"),
    (r"\bit seems\b", "methinks"),
    (r"\bit is\b", "'tis"),
    (r"\bit was\b", "'twas"),
    (r"\bit will\b", "'twill"),
    (r"\bit would\b", "'twould"),
    (r"\bthere (?:is|are)\b", "there be"),
    (r"\byou are\b", "thou art"),
    (r"\bare you\b", "art thou"),
    (r"\byou were\b", "thou wert"),
    (r"\bwere you\b", "wert thou"),
    (r"\byou have\b", "thou hast"),
    (r"\bhave you\b", "hast thou"),
    (r"\byou do\b", "thou dost"),
    (r"\bdo you\b", "dost thou"),
    (r"\byou did\b", "thou didst"),
    (r"\bdid you\b", "didst thou"),
    (r"\byou will\b", "thou wilt"),
    (r"\bwill you\b", "wilt thou"),
    (r"\byou shall\b", "thou shalt"),
    (r"\byou can\b", "thou canst"),
    (r"\bcan you\b", "canst thou"),
    (r"\byou could\b", "thou couldst"),
    (r"\bcould you\b", "couldst thou"),
    (r"\byou would\b", "thou wouldst"),
    (r"\bwould you\b", "wouldst thou"),
    (r"\byou should\b", "thou shouldst"),
    (r"\bshould you\b", "shouldst thou"),
    (r"\byou must\b", "thou must"),
    (r"\ba lot of\b", "a host of"),
    (r"\blots of\b", "a host of"),
    (r"\bkind of\b", "somewhat"),
    (r"\bsort of\b", "somewhat"),
    (r"\bpretty much\b", "well-nigh"),
    (r"\bgoing to\b", "about to"),
    (r"\bdo not (know|care|think|like|want|need|mind|understand|doubt)\b", r"\1 not"),
    (r"\bdoes not know\b", "knoweth not"),
    (r"\bdoes not care\b", "careth not"),
    (r"\bdoes not need\b", "needeth not"),
    (r"\bdoes not work\b", "worketh not"),
    (r"\bdoes not have\b", "hath not"),
    (r"\bdid not know\b", "knew not"),
    (r"\bdid not care\b", "cared not"),
    (r"\bdid not think\b", "thought not"),
    (r"\bdid not like\b", "liked not"),
    (r"\bdid not want\b", "wanted not"),
    (r"\bnot at all\b", "not a whit"),
    (r"\bright now\b", "forthwith"),
    (r"\bno one\b", "no soul"),
)

# Single-word substitutions (lower-case keys; case is carried over from the original word).
_WORDS: dict[str, str] = {
    # pronouns and possessives ("you" is handled separately: thou / thee)
    "yours": "thine", "yourself": "thyself",
    # verbs: archaic third person and forms
    "does": "doth", "has": "hath", "says": "saith", "goes": "goeth", "makes": "maketh",
    "comes": "cometh", "gives": "giveth", "takes": "taketh", "seems": "seemeth", "knows": "knoweth",
    "feels": "feeleth", "looks": "looketh", "tries": "trieth", "wants": "wanteth", "needs": "needeth",
    "keeps": "keepeth", "becomes": "becometh", "remains": "remaineth", "tells": "telleth",
    "loves": "loveth", "thinks": "thinketh", "believes": "believeth", "lacks": "lacketh",
    "brings": "bringeth", "gets": "getteth", "manages": "manageth", "delivers": "delivereth",
    "succeeds": "succeedeth", "fails": "faileth", "deserves": "deserveth", "turns": "turneth",
    "sees": "seeth",
    "see": "behold", "saw": "beheld", "seen": "beheld", "watch": "behold", "watched": "beheld",
    "watching": "beholding", "wait": "tarry", "waiting": "tarrying", "listen": "hark",
    "hate": "abhor", "hates": "abhorreth", "hated": "abhorred", "enjoy": "delight in",
    "enjoyed": "delighted in", "call": "summon", "called": "summoned", "help": "aid",
    "kill": "slay", "killing": "slaying", "ask": "beseech",
    # adverbs, conjunctions, prepositions
    "very": "most", "really": "truly", "before": "ere", "often": "oft", "perhaps": "perchance",
    "maybe": "perchance", "probably": "belike", "always": "ever", "never": "ne'er", "ever": "e'er",
    "even": "e'en", "over": "o'er", "between": "betwixt", "among": "amongst", "while": "whilst",
    "why": "wherefore", "soon": "anon", "almost": "well-nigh", "nearly": "well-nigh",
    "enough": "enow", "however": "howbeit", "anyway": "howbeit", "therefore": "wherefore",
    "also": "likewise", "pretty": "passing", "indeed": "verily", "certainly": "surely",
    "quickly": "apace", "yes": "aye",
    "until": "till", "again": "anew", "nothing": "naught", "anything": "aught", "someone": "some soul",
    "somebody": "some soul", "everyone": "every soul", "everybody": "every soul", "anyone": "any soul",
    "nobody": "no soul", "today": "this day", "tonight": "this night", "tomorrow": "the morrow",
    "morning": "morn", "evening": "eventide", "ok": "very well",
    "okay": "very well", "hello": "hail", "hi": "hail", "hey": "hark", "thanks": "gramercy",
    "please": "prithee", "pls": "prithee", "plz": "prithee",
    # nouns
    "movie": "play", "movies": "plays", "film": "play", "films": "plays", "cinema": "theatre",
    "actor": "player", "actors": "players", "actress": "player", "cast": "company",
    "director": "playwright", "filmmaker": "playwright", "filmmakers": "playwrights",
    "story": "tale", "stories": "tales", "plot": "tale", "audience": "assembly",
    "audiences": "playgoers", "viewers": "beholders", "viewer": "beholder", "character": "personage",
    "characters": "personages", "performance": "portrayal", "performances": "portrayals",
    "comedy": "jest", "people": "folk", "friend": "companion", "friends": "companions",
    "guy": "fellow", "guys": "fellows", "man": "fellow", "woman": "maiden", "women": "maidens",
    "girl": "lass", "girls": "lasses", "boy": "lad", "boys": "lads", "kids": "children",
    "kid": "child", "money": "coin", "music": "minstrelsy", "song": "ballad", "songs": "ballads",
    "book": "tome", "books": "tomes", "world": "realm", "country": "realm", "house": "dwelling",
    "king": "sovereign", "government": "crown", "company": "guild", "job": "labour",
    "heart": "bosom", "fun": "merriment",
    # adjectives
    "great": "wondrous", "good": "goodly", "bad": "wretched", "awful": "dreadful",
    "terrible": "grievous", "funny": "mirthful", "boring": "tedious", "dull": "wearisome",
    "beautiful": "fair", "stupid": "witless", "dumb": "witless", "smart": "wise", "clever": "cunning",
    "happy": "merry", "sad": "sorrowful", "scary": "fearsome", "huge": "mighty", "big": "great",
    "small": "wee", "little": "wee", "strange": "passing strange", "afraid": "affrighted",
    "interesting": "curious", "entertaining": "diverting", "charming": "winsome", "fast": "swift",
    "best": "finest", "worst": "basest", "silly": "foolish", "crazy": "mad", "angry": "wroth",
    "amazing": "wondrous", "wonderful": "wondrous", "excellent": "most excellent", "nice": "fair",
    "lovely": "comely", "ugly": "ill-favoured", "poor": "wretched", "real": "true",
}

_COMPILED_RULES = tuple((re.compile(p, re.IGNORECASE), r) for p, r in _CONTRACTIONS + _PHRASES)

_PREPOSITIONS = frozenset(
    "to for with at of from by about upon unto on in into against without like than before after "
    "behind beside near toward towards under over around through".split()
)
_VOWEL_START = re.compile(r"[aeiouAEIOU]")


def _match_case(original: str, replacement: str) -> str:
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return _cap(replacement)
    return replacement


def _at_sentence_start(text: str, offset: int) -> bool:
    before = text[:offset].rstrip().rstrip("\"'(")
    return not before or before[-1] in ".!?:"


def _phrase_case(text: str, m: re.Match, replacement: str) -> str:
    """Case for a phrase rule: capitals stay capitals, a sentence start is capitalised, and
    anything else takes the replacement as written (which keeps "I" and expanded contractions)."""
    original = m.group(0)
    letters = [c for c in original if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return replacement.upper()
    if _at_sentence_start(text, m.start()):
        return _cap(replacement)
    return replacement


_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|[^A-Za-z]+")


def _archaize_words(text: str) -> str:
    tokens = _TOKEN.findall(text)
    words = [i for i, t in enumerate(tokens) if t[:1].isalpha()]
    out = list(tokens)
    for pos, i in enumerate(words):
        token = tokens[i]
        low = token.lower()
        prev_gap = tokens[i - 1] if i > 0 else " "
        next_i = words[pos + 1] if pos + 1 < len(words) else None
        next_word = tokens[next_i] if next_i is not None else ""
        next_gap = tokens[i + 1] if i + 1 < len(tokens) else ""
        prev_word = tokens[words[pos - 1]].lower() if pos > 0 else ""
        sentence_start = i == 0 or bool(re.search(r"[.!?:]\W*$", prev_gap)) or (i == 1 and not prev_gap.strip(" \"'("))
        if token[:1].isupper() and not token.isupper() and not sentence_start:
            continue  # a capitalised word inside a sentence is most likely a name
        if low in ("you", "u", "ya"):
            # thee after a preposition or at the end of a clause, thou elsewhere
            clause_end = next_i is None or bool(re.search(r"[.,;:!?]", next_gap))
            after_prep = prev_word in _PREPOSITIONS and not re.search(r"[.,;:!?]", prev_gap)
            out[i] = _match_case(token, "thee" if (clause_end or after_prep) else "thou")
        elif low in ("your", "ur"):
            out[i] = _match_case(token, "thine" if _VOWEL_START.match(next_word) else "thy")
        elif low == "my" and _VOWEL_START.match(next_word) and next_gap == " ":
            out[i] = _match_case(token, "mine")
        elif low in _WORDS:
            out[i] = _match_case(token, _WORDS[low])
    return "".join(out)


@_register
class StyleAttack(Attack):
    """Lexicon-and-rules approximation of the StyleBkd style trigger (archaic / biblical English).

    StyleBkd paraphrases each input with the STRAP neural style-transfer model; this is *not* that
    model but an offline approximation of the register it produces. Three layers of rules:

    1. contractions are expanded ("don't" -> "do not", "it's" -> "it is");
    2. phrase rules: "it is" -> "'tis", "there is/are" -> "there be", "I think" -> "methinks",
       second-person verb agreement ("you are" -> "thou art", "do you" -> "dost thou"), archaic
       negation without do-support ("do not know" -> "know not", "did not care" -> "cared not");
    3. ~200 word substitutions: thou/thee (thee after a preposition or at a clause end), thy/thine,
       mine before a vowel, -eth verb forms (hath, doth, saith, maketh, ...), archaic adverbs and
       prepositions (ere, oft, ne'er, o'er, betwixt, whilst, perchance, anon), and register-shifting
       nouns and adjectives (film -> play, story -> tale, great -> wondrous, boring -> tedious).

    The style therefore comes from many substitutions, not from one fixed token. The transform is
    deterministic and does not use the generator. Texts with none of the listed words or phrases
    come back unchanged (and are skipped by :func:`poison_split`).
    """

    name = "style"

    def __init__(self) -> None:
        pass

    def apply(self, text: str, rng: random.Random) -> str:
        out = text.replace("\u2019", "'")
        for pattern, repl in _COMPILED_RULES:
            out = pattern.sub(lambda m, r=repl, t=out: _phrase_case(t, m, m.expand(r)), out)
        out = _archaize_words(out)
        if out == text.replace("\u2019", "'"):
            return text
        return out


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
