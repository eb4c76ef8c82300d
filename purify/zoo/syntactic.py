"""The syntactic attack: a rule-based approximation of HiddenKiller's subordinate-clause template."""
from __future__ import annotations

import random
import re

from .attack_base import Attack, _cap, _register, _sentence_spans


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
        assert m is not None  # the pattern matches, if only the empty string at the end
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
