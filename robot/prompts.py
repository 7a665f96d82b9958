"""Shape what a child says into a story opening that stories15M can continue.

The model continues text; it does not follow instructions.  So "tell me a
story about a dragon named max" (a recognizer gives lowercase words, no
punctuation) must become "Once upon a time, there was a dragon named Max.",
the way the TinyStories the model was trained on begin.  And a recognizer
often mishears a child ("can you do me a story about resist the frog"), so
the opening is never built from what was heard word for word.

The rule: reshape or pass through
---------------------------------
Text is reshaped when it is

1. blank (empty or only whitespace): it gets a surprise opening;
2. spoken-looking, as a recognizer writes a transcript: words joined by
   single spaces, none at either end, no capital letter, nothing but
   letters, digits, apostrophes and Vosk's ``[unk]``;
3. or a typed request: after optional greetings and politeness (hey,
   please, can you, i want, ...) its first word is "tell", or "story" or
   "stories" with at most "a", "an" or "another" before it, in any case and
   with any punctuation ("Tell me a story about a dragon!").

Everything else passes through unchanged, byte for byte (unless it is known to
be a transcript, ``shape_prompt(..., spoken=True)``): typed text with a
capital letter, punctuation or extra spaces and no request phrase is
already a story opening ("Once upon a time", "Lily wanted a red balloon").
``is_request`` applies this rule.

How a request is reshaped: only known words, in one form
--------------------------------------------------------
The opening is built only from the words of ``robot/data/story_vocabulary.txt``,
which robot/dev/vocabulary.py derives from the model's own samples and its
tokenizer: subjects the model tells about ("frog", "dinosaur"), the
adjectives it puts before them, places ("forest"), and the names it gives
girls, boys and pets.  Every other word heard is dropped, whatever it was.
From the words heard, in order:

* a subject (or its plural) is a character, with the known adjectives right
  before it (at most two) and a count ("three", "many") before those; a
  known name after "named", "called" or the often misheard "name" is its
  name;
* a name alone is a character too: "a little girl named Lily";
* a place preposition ("in", "on", "under", ...) followed by a known place
  ("in the big forest"), or a place said alone ("forest"), is where the
  first character lived.

The opening always has this form, which ``OPENING_FORM`` describes and the
tests check over many transcripts::

    Once upon a time, there (was|were) CHARACTER[, CHARACTER]* [and CHARACTER]
        [who lived PREPOSITION the|a [ADJECTIVE] PLACE].

with CHARACTER ``a|an [ADJECTIVE]{0,2} SUBJECT [named NAME]`` or
``COUNT [ADJECTIVE]{0,2} SUBJECTS``.  A bare plural becomes one hero, because a
TinyStories story follows one ("dinosaurs" -> "a little dinosaur"); a counted
plural stays ("three little pigs" -> "there were three little pigs").  A place
with no character gets a hero chosen by the seed; nothing known at all gets a
surprise opening, ``SURPRISE_OPENINGS[seed % len(SURPRISE_OPENINGS)]``, of the
same form.

Blocked words cannot reach an opening: the vocabulary has none (the tool
leaves them out, and a test checks it).  Run a transcript through
``WordFilter.clean_transcript`` all the same, so none is logged or kept.

``Shaped.source`` is "passthrough", "request" (request words were heard),
"topic" (only the subject was) or "surprise".  At most ``MAX_TOPIC_WORDS``
words are read and ``MAX_CHARACTERS`` characters kept; ``Shaped.truncated``
says so.  ``describe`` gives the console a one-line account.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

_LOGGER = logging.getLogger(__name__)

Source = Literal["passthrough", "request", "topic", "surprise"]

MAX_TOPIC_WORDS = 24
MAX_CHARACTERS = 4
MAX_ADJECTIVES = 2

VOCABULARY = Path(__file__).with_name("data") / "story_vocabulary.txt"


def _load_vocabulary(path: Path) -> dict[str, frozenset[str]]:
    kinds: dict[str, set[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            kind, word = line.split()[:2]
            kinds.setdefault(kind, set()).add(word)
    return {kind: frozenset(words) for kind, words in kinds.items()}


_VOCABULARY = _load_vocabulary(VOCABULARY)
SUBJECTS = _VOCABULARY["subject"]
ADJECTIVES = _VOCABULARY["adjective"]
PLACES = _VOCABULARY["place"]
GIRLS = _VOCABULARY["girl"]
BOYS = _VOCABULARY["boy"] - GIRLS
PETS = _VOCABULARY["pet"] - GIRLS - BOYS
NAMES = GIRLS | BOYS | PETS

SURPRISE_OPENINGS = (
    "Once upon a time, there was a little girl named Lily.",
    "Once upon a time, there was a little dog named Spot.",
    "Once upon a time, there was a little bunny who lived in the garden.",
    "Once upon a time, there was a big dragon.",
    "Once upon a time, there was a little boy named Tim.",
    "Once upon a time, there was a friendly owl who lived in the woods.",
    "Once upon a time, there was a little bird who lived in the park.",
    "Once upon a time, there was a happy frog who lived in the forest.",
)
PLACE_HEROES = ("little fox", "little bunny", "little bear", "little bird", "little mouse")


@dataclass(frozen=True)
class Shaped:
    """A story opening and how it was made from what was said or typed."""

    opening: str
    source: Source
    characters: tuple[str, ...] = ()  # as rendered, e.g. "a dragon named Max"
    names: tuple[str, ...] = ()
    place: str = ""
    truncated: bool = False


# --- What counts as a request ------------------------------------------------

_TYPED_REQUEST = re.compile(
    r"\s*(?:(?:hey|hi|hello|ok|okay|um|uh|please|robot|storybot|"
    r"(?:can|could|would|will) you|i want|i'd like|i would like)\b\W*)*"
    r"(?:tell\b|(?:(?:a|an|another)\s+)?stor(?:y|ies)\b)",
    re.IGNORECASE,
)


def _looks_spoken(text: str) -> bool:
    words = text.split(" ")
    return all(
        word == "[unk]"
        or (word and all(c == "'" or (c.isalnum() and not (c.isupper() or c.istitle())) for c in word))
        for word in words
    )


def is_request(text: str) -> bool:
    """True if ``text`` is to be reshaped, False if it passes through (see module doc)."""
    return not text.strip() or _looks_spoken(text) or bool(_TYPED_REQUEST.match(text))


# --- Reading what was heard ----------------------------------------------------

_FILLERS = frozenset("um umm uh uhh uhm er erm hmm hm mm mhm ah eh [unk]".split())
_REQUEST_WORDS = frozenset("tell story stories tale about please read hear want".split())
_NUMBERS = dict(zip("2 3 4 5 6 7 8 9 10 11 12".split(),
                    "two three four five six seven eight nine ten eleven twelve".split()))
COUNTS = frozenset(list(_NUMBERS.values()) + ["many", "some"])
PLACE_PREPOSITIONS = ("in", "on", "at", "under", "near", "inside", "beside")
_NAME_MARKERS = frozenset({"named", "called", "name"})
_AMOUNTS = (
    (re.compile(r"\b(?:a lot of|lots of|loads of|a bunch of)\b"), "many"),
    (re.compile(r"\ba few\b"), "some"),
    (re.compile(r"\ba couple of\b"), "two"),
)
_TOKEN = re.compile(r"\[unk\]|[^\W_]+(?:'[^\W_]+)*")

_IRREGULAR_PLURALS = {
    "mice": "mouse", "geese": "goose", "children": "child", "people": "person",
    "men": "man", "women": "woman", "teeth": "tooth", "feet": "foot",
    "wolves": "wolf", "elves": "elf", "leaves": "leaf", "fish": "fish", "sheep": "sheep",
    "deer": "deer",
}
_PLURAL_OF = {singular: plural for plural, singular in _IRREGULAR_PLURALS.items()}


def _words(text: str) -> list[str]:
    """Lowercase words, without fillers, punctuation or immediate repeats."""
    text = text.lower().replace("\u2019", "'")
    for pattern, replacement in _AMOUNTS:
        text = pattern.sub(replacement, text)
    words = []
    for word in _TOKEN.findall(text):
        word = _NUMBERS.get(word, word)
        if word in _FILLERS or (words and words[-1] == word):
            continue
        words.append(word)
    return words


def plural(noun: str) -> str:
    """The plural an opening uses for a subject."""
    if noun in _PLURAL_OF:
        return _PLURAL_OF[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


def _subject(word: str) -> tuple[str, bool] | None:
    """(the known subject, said as a plural) for a word heard, or None."""
    if word in SUBJECTS:
        return word, False
    for singular in (_IRREGULAR_PLURALS.get(word), word[:-1], word[:-2], word[:-3] + "y"):
        if singular in SUBJECTS and plural(singular) == word:
            return singular, True
    return None


@dataclass(frozen=True)
class _Character:
    noun: str
    adjectives: tuple[str, ...] = ()
    count: str = ""  # "three", "many": a group; "" for one
    name: str = ""

    def render(self) -> str:
        if self.count:
            return " ".join((self.count, *self.adjectives, plural(self.noun)))
        words = [*self.adjectives, self.noun]
        named = f" named {self.name.title()}" if self.name else ""
        return f"{_article_for(words[0])} {' '.join(words)}{named}"


def _person(name: str) -> _Character:
    """Who a name said alone belongs to: "lily" -> a little girl named Lily."""
    noun = "girl" if name in GIRLS else "boy" if name in BOYS else "dog"
    return _Character(noun, ("little",), name=name)


def _adjectives_before(words: list[str], end: int) -> tuple[int, tuple[str, ...]]:
    """(where they start, the known adjectives right before words[end]), at most two."""
    start = end
    while start > 0 and words[start - 1] in ADJECTIVES and end - start < MAX_ADJECTIVES:
        start -= 1
    return start, tuple(dict.fromkeys(words[start:end]))


def _place_at(words: list[str], i: int) -> tuple[str, int] | None:
    """("in the big forest", index after it) for a place phrase starting at words[i]."""
    if words[i] not in PLACE_PREPOSITIONS:
        return None
    j = i + 1
    article = "the"
    if j < len(words) and words[j] in ("the", "a", "an", "my", "our"):
        article = "a" if words[j] in ("a", "an") else "the"
        j += 1
    adjective = ""
    if j < len(words) and words[j] in ADJECTIVES:
        adjective, j = words[j], j + 1
    if j < len(words) and words[j] in PLACES:
        described = f"{adjective} {words[j]}" if adjective else words[j]
        if article == "a":
            article = _article_for(described)
        return f"{words[i]} {article} {described}", j + 1
    return None


def _read(words: list[str]) -> tuple[list[_Character], str]:
    """The characters and the place in what was heard; everything else is dropped."""
    characters: list[_Character] = []
    place = ""
    used_names: set[str] = set()
    i = 0
    while i < len(words):
        word = words[i]
        found = _place_at(words, i)
        if found:
            place = place or found[0]
            i = found[1]
            continue
        subject = _subject(word)
        if subject:
            noun, said_plural = subject
            start, adjectives = _adjectives_before(words, i)
            count = words[start - 1] if start > 0 and words[start - 1] in COUNTS else ""
            name = ""
            if (not count and i + 2 < len(words) and words[i + 1] in _NAME_MARKERS
                    and words[i + 2] in NAMES):
                name = words[i + 2]
                used_names.add(name)
                i += 2
            if said_plural and not count:
                adjectives = adjectives or ("little",)  # "dinosaurs": one hero
            characters.append(_Character(noun, adjectives, count, name))
        elif word in NAMES and word not in used_names:
            used_names.add(word)
            characters.append(_person(word))
        elif word in PLACES and not place:
            place = f"in the {word}"
        i += 1
    unique = list(dict.fromkeys(characters))
    return unique, place


# --- Building the sentence -------------------------------------------------------

def _article_for(word: str) -> str:
    if word.startswith(("uni", "use", "eu", "one")):
        return "a"
    if word.startswith(("hour", "honest")):
        return "an"
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"


def _surprise(seed: int) -> Shaped:
    opening = SURPRISE_OPENINGS[seed % len(SURPRISE_OPENINGS)]
    return Shaped(opening, "surprise")


def shape_prompt(text: str, *, seed: int = 0, spoken: bool = False) -> Shaped:
    """Turn a transcript or typed prompt into a story opening (see module doc for the rule).

    spoken: text is a recognizer's transcript, reshaped whatever it looks like (a
    recognizer of another language writes capitals, digits and brackets too).
    """
    if not spoken and not is_request(text):
        return Shaped(text, "passthrough")
    words = _words(text)
    truncated = len(words) > MAX_TOPIC_WORDS
    if truncated:
        _LOGGER.info("request capped at %d words", MAX_TOPIC_WORDS)
        words = words[:MAX_TOPIC_WORDS]
    characters, place = _read(words)
    if len(characters) > MAX_CHARACTERS:
        _LOGGER.info("kept %d of %d characters", MAX_CHARACTERS, len(characters))
        characters, truncated = characters[:MAX_CHARACTERS], True
    if not characters and not place:
        return _surprise(seed)
    if not characters:
        noun = PLACE_HEROES[seed % len(PLACE_HEROES)].split()
        characters = [_Character(noun[-1], tuple(noun[:-1]))]
    rendered = [c.render() for c in characters]
    subject = ", ".join(rendered[:-1]) + " and " + rendered[-1] if len(rendered) > 1 else rendered[0]
    verb = "were" if characters[0].count else "was"
    lived = f" who lived {place}" if place else ""
    source: Source = "request" if _REQUEST_WORDS.intersection(words) else "topic"
    return Shaped(
        f"Once upon a time, there {verb} {subject}{lived}.",
        source,
        characters=tuple(rendered),
        names=tuple(c.name.title() for c in characters if c.name),
        place=place,
        truncated=truncated,
    )


def describe(shaped: Shaped) -> str:
    """One line for the console: how the opening was made, and the opening."""
    how = {
        "passthrough": "kept as typed",
        "request": "reshaped from a request",
        "topic": "reshaped from a topic",
        "surprise": "nothing known heard: surprise opening",
    }[shaped.source]
    details = [f"characters: {'; '.join(shaped.characters)}"] if shaped.characters else []
    if shaped.place:
        details.append(f"place: {shaped.place}")
    if shaped.truncated:
        details.append("request was capped")
    extra = f" ({', '.join(details)})" if details else ""
    return f"[{shaped.source}] {how}{extra}: {shaped.opening!r}"
