"""The style attack: a lexicon-and-rules approximation of StyleBkd's archaic (biblical) register."""
from __future__ import annotations

import random
import re
from collections.abc import Callable

from .attack_base import Attack, _cap, _register


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


def _rule_replacement(text: str, repl: str) -> Callable[[re.Match[str]], str]:
    """What `re.sub` puts for a match of a phrase rule in `text`: `repl` expanded, cased by `_phrase_case`."""
    return lambda m: _phrase_case(text, m, m.expand(repl))


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
            out = pattern.sub(_rule_replacement(out, repl), out)
        out = _archaize_words(out)
        if out == text.replace("\u2019", "'"):
            return text
        return out
