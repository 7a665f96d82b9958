"""Shape what a child says into a story opening that stories15M can continue.

The model continues text; it does not follow instructions.  So "tell me a
story about a dragon named max" (Vosk gives lowercase words, no punctuation)
must become "Once upon a time, there was a dragon named Max.", the way the
TinyStories the model was trained on begin.

The rule: reshape or pass through
---------------------------------
Text is reshaped when it is

1. blank (empty or only whitespace): it gets a surprise opening;
2. spoken-looking, as Vosk writes a transcript: words joined by single
   spaces, none at either end, no capital letter, nothing but letters,
   digits, apostrophes and Vosk's ``[unk]`` ("tell me a story about a cat",
   "dinosaurs", "um uh");
3. or a typed request: after optional greetings and politeness (hey,
   please, can you, i want, ...) its first word is "tell", or "story" or
   "stories" with at most "a", "an" or "another" before it, in any case and
   with any punctuation ("Tell me a story about a dragon!").

Everything else passes through unchanged, byte for byte: typed text with a
capital letter, punctuation or extra spaces and no request phrase is
already a story opening ("Once upon a time", "Lily wanted a red balloon",
"  two leading spaces").  ``is_request`` applies this rule.

How a request is reshaped
-------------------------
Fillers ("um", "[unk]"), repeated words ("a a dragon") and punctuation go;
request words go from the start ("hey robot can you tell me a story
about"), politeness from the end ("please", "thank you").  What is left:

* begins like a story ("once upon a time ...", "one day ...", "there was
  ..."): tidied into a sentence;
* begins with "where", "when" or "how": "Once upon a time, <the rest>.";
* otherwise characters, a place and a clause: "Once upon a time, there was
  a princess named Lily and a frog named Bob who lived in the forest.".
  "named", "called" and the often misheard "name" all become "named", and
  the name after it is capitalized; articles are fixed ("a elephant" -> "an
  elephant") or added ("dragon" -> "a dragon"); a known first name alone
  becomes "a little girl named Lily".
* A bare plural becomes one hero, because a TinyStories story follows one:
  "dinosaurs" -> "a little dinosaur" ("little" only when no adjective was
  said).  A counted plural stays: "three little pigs" -> "there were three
  little pigs".
* A place with no character gets a little animal chosen by the seed
  ("in the forest" -> "a little fox who lived in the forest").
* Nothing left ("", "um uh", "tell me a story"): a surprise opening,
  ``SURPRISE_OPENINGS[seed % len(SURPRISE_OPENINGS)]``.

``Shaped.source`` is "passthrough", "request" (request words were
stripped), "topic" (what was said was only the subject, e.g. "dinosaurs")
or "surprise".  Blocked words are not this module's business: run a
transcript through ``WordFilter.clean_transcript`` first (never typed text,
which must pass through untouched).

What the child said is capped at ``MAX_TOPIC_WORDS`` words and
``MAX_CHARACTERS`` characters, cut between words; ``Shaped.truncated`` says
so and it is logged.  ``describe`` gives the console a one-line account.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

_LOGGER = logging.getLogger(__name__)

Source = Literal["passthrough", "request", "topic", "surprise"]

MAX_TOPIC_WORDS = 24
MAX_CHARACTERS = 4

SURPRISE_OPENINGS = (
    "Once upon a time, there was a little girl named Lily.",
    "Once upon a time, there was a little dog named Spot.",
    "One day, a little bunny found a shiny red ball in the garden.",
    "Once upon a time, there was a friendly dragon who loved to sing.",
    "Once upon a time, there was a little boy named Tim who had a big red truck.",
    "Once upon a time, in a small town, there lived a kind old owl.",
    "One sunny day, a little bird named Kiki flew over the hill.",
    "Once upon a time, there was a happy little frog who lived by a pond.",
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


# --- Vocabulary ---------------------------------------------------------------

_FILLERS = frozenset("um umm uh uhh uhm er erm hmm hm mm mhm ah eh [unk]".split())
_LEAD_WORDS = frozenset(
    "hey hi hello okay ok so well now and robot storybot please can could would will "
    "you we i i'd i'll want wanna like love really let's lets let me us to hear tell "
    "read make up give have do know say".split()
)
_STORY_WORDS = frozenset("story stories tale tales".split())
_STORY_MODIFIERS = frozenset(
    "a an another one the some my your new short long funny silly bedtime good nice "
    "fun cool great happy scary different little more real".split()
)
_LINKS = frozenset("about bout of with called featuring".split())
_TRAILING = frozenset("please thanks story stories tale tales".split())
_VOCATIVES = frozenset({"robot", "storybot"})

_NUMBERS = dict(zip("1 2 3 4 5 6 7 8 9 10 11 12".split(),
                    "one two three four five six seven eight nine ten eleven twelve".split()))
_QUANTITIES = frozenset(list(_NUMBERS.values())[1:] + ["many", "some", "several"])
_DETERMINERS = frozenset("a an the one another my your his her our their this these those".split())
_PLACE_PREPS = frozenset("in on at under inside near beside".split())
_CLAUSE_WORDS = frozenset("who that which whose with where when".split())
# "name" because the recognizer often hears "a dog name max".
_NAME_MARKERS = frozenset({"named", "called", "name"})
_NP_STOPS = frozenset({"and"}) | _NAME_MARKERS | _PLACE_PREPS | _CLAUSE_WORDS
_DANGLING = _DETERMINERS | _QUANTITIES | _NP_STOPS - {"name"} | {"of", "to", "very", "about"}
_CLAUSE_STARTS = frozenset({"where", "when", "how"})
_JOINS = frozenset("and then but so because".split())

# Names common in TinyStories; a name said alone becomes "a little girl/boy named ...".
# Names that are also everyday words (rose, daisy, jack, mark, will) are left out.
_GIRLS = frozenset(
    "lily sue sara sarah anna amy lucy mia emma jane kate jill molly ella zoe sophie "
    "ava olivia emily alice bella chloe susie lisa maya nina ellie sally mary jenny".split()
)
_BOYS = frozenset(
    "tim tom timmy tommy ben max sam bob joe john leo jake billy bobby peter mike "
    "james noah liam oliver jim danny ryan luke adam".split()
)
_NAMES = _GIRLS | _BOYS

_IRREGULAR_PLURALS = {
    "mice": "mouse", "geese": "goose", "children": "child", "people": "person",
    "men": "man", "women": "woman", "teeth": "tooth", "feet": "foot", "oxen": "ox",
    "wolves": "wolf", "elves": "elf", "dwarves": "dwarf", "leaves": "leaf",
    "knives": "knife", "calves": "calf", "halves": "half", "shelves": "shelf",
    "thieves": "thief", "cookies": "cookie", "zombies": "zombie", "movies": "movie",
    "pies": "pie", "brownies": "brownie", "genies": "genie", "heroes": "hero",
    "potatoes": "potato", "tomatoes": "tomato", "volcanoes": "volcano",
}
_SINGULAR_ENDING_IN_S = frozenset(
    "bus gas news lens chaos mars christmas rhinoceros atlas canvas yes this always "
    "tennis pegasus claus".split()
)
_OPENERS = (
    ("once", "upon", "a", "time"),
    ("a", "long", "time", "ago"),
    ("long", "ago"),
    ("one", "day"),
)
_PARTS_OF_DAY = frozenset("day morning afternoon evening night".split())
_THERE = (("there", "was"), ("there", "were"), ("there", "lived"), ("there", "once"), ("there", "is"))
_THERE_WORDS = frozenset(word for pair in _THERE for word in pair) | {"lived"}


# --- Cleaning the words --------------------------------------------------------

_TOKEN = re.compile(r"\[unk\]|[^\W_]+(?:['-][^\W_]+)*")
_AMOUNTS = (
    (re.compile(r"\b(?:a lot of|lots of|loads of|a bunch of)\b"), "many"),
    (re.compile(r"\ba few\b"), "some"),
    (re.compile(r"\ba couple of\b"), "two"),
)


def _words(text: str) -> list[str]:
    """Lowercase words, without fillers, punctuation or immediate repeats."""
    text = text.lower().replace("\u2019", "'")
    for pattern, replacement in _AMOUNTS:
        text = pattern.sub(replacement, text)
    words = []
    for word in _TOKEN.findall(text):
        word = _NUMBERS.get(word, word)
        # Over-long "words" are recognizer noise, not something to say back.
        if word in _FILLERS or len(word) > 40 or (words and words[-1] == word):
            continue
        words.append(word)
    return words


def _strip_request(words: list[str]) -> tuple[list[str], bool]:
    """The subject of the request, and whether any request words were stripped."""
    start = 0
    while True:
        before = start
        while start < len(words) and words[start] in _LEAD_WORDS:
            start += 1
        end = start
        while end < len(words) and words[end] in _STORY_MODIFIERS:
            end += 1
        if end < len(words) and words[end] in _STORY_WORDS:
            start = end + 1
        while start < len(words) and words[start] in _LINKS:
            start += 1
        if start == before:
            break
    topic = words[start:]
    # "tell me a glory about a cat": a misheard "story" still ends at "about".
    abouts = [k for k, word in enumerate(topic[:4]) if word in ("about", "bout")]
    if abouts and not _NP_STOPS.intersection(topic[: abouts[0]]):
        topic = topic[abouts[0] + 1:]
    end = len(topic)
    while end:
        if topic[end - 1] in _TRAILING:
            end -= 1
        elif end >= 2 and topic[end - 2:end] == ["thank", "you"]:
            end -= 2
        elif topic[end - 1] in _VOCATIVES and end >= 2 and topic[end - 2] in _TRAILING | {"you"}:
            end -= 1
        else:
            break
    topic = topic[:end]
    return topic, len(topic) != len(words)


def _cap_topic(words: list[str]) -> tuple[list[str], bool]:
    truncated = len(words) > MAX_TOPIC_WORDS
    words = words[:MAX_TOPIC_WORDS]
    if truncated:
        # End on a whole part of what was said: "... in the world and then goes to" -> "... in the world".
        joins = [k for k, word in enumerate(words) if word in _JOINS and k >= MAX_TOPIC_WORDS // 2]
        if joins:
            words = words[: joins[-1]]
    # A cut, or a recognizer that stopped early, can leave "a cat and" or "a dog named".
    while words and words[-1] in _DANGLING:
        words.pop()
    return words, truncated


# --- Nouns and characters ---------------------------------------------------

def _is_plural(noun: str) -> bool:
    if noun in _IRREGULAR_PLURALS:
        return True
    return (
        len(noun) > 3
        and noun.endswith("s")
        and not noun.endswith(("ss", "us", "is", "'s"))
        and noun not in _SINGULAR_ENDING_IN_S
    )


def _singular(noun: str) -> str:
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith("ies") and len(noun) > 4:
        return noun[:-3] + "y"
    if noun.endswith(("sses", "xes", "zes", "ches", "shes")):
        return noun[:-2]
    return noun[:-1]


def _capitalize(word: str) -> str:
    return "-".join(part[:1].title() + part[1:] for part in word.split("-"))


def _person(name: str) -> list[str]:
    """Who a name said without a noun belongs to: "lily" -> "little girl"."""
    if name in _GIRLS:
        return ["little", "girl"]
    if name in _BOYS:
        return ["little", "boy"]
    return ["friend"]


@dataclass(frozen=True)
class _Character:
    words: tuple[str, ...]
    name: str
    plural: bool


def _character(phrase: list[str], name_words: list[str]) -> _Character | None:
    det, article = "", ""
    i = 0
    while i < len(phrase) and (phrase[i] in _DETERMINERS or phrase[i] in _QUANTITIES or phrase[i].isdigit()):
        if phrase[i] in _QUANTITIES or phrase[i].isdigit():
            det = phrase[i]
        elif not article:
            article = "a" if phrase[i] in ("a", "an", "one", "another") else "the"
        i += 1
    body = phrase[i:]
    # "named max the big dragon": the first word is the name, the rest is kept as said.
    name, extra = (name_words, []) if len(name_words) <= 2 else (name_words[:1], name_words[1:])
    if not body and not name:
        return None
    if not body:
        body = _person(name[0])
    *mods, noun = body
    plural = bool(det)
    if not det:
        det = "a"
        if article == "a":
            plural = _is_plural(noun)
        elif not article and not mods and not name and noun in _NAMES:
            name, (*mods, noun) = [noun], _person(noun)
        elif _is_plural(noun):
            noun = _singular(noun)
            mods = mods or ["little"]
    rendered_name = " ".join(_capitalize(w) for w in name)
    words = [det, *mods, noun] + (["named", rendered_name] if name else []) + extra
    return _Character(tuple(words), rendered_name, plural)


def _until(words: list[str], start: int, stops: frozenset[str]) -> int:
    while start < len(words) and words[start] not in stops:
        start += 1
    return start


def _parse_subject(words: list[str]) -> tuple[list[_Character], list[str], list[str]]:
    """Characters, place words ("in the forest") and a trailing clause ("who can fly")."""
    characters: list[_Character] = []
    place: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in _CLAUSE_WORDS:
            return characters, place, words[i:]
        if word in _PLACE_PREPS:
            end = _until(words, i + 1, _CLAUSE_WORDS | {"and"})
            place += (["and"] if place else []) + words[i:end]
            i = end
        elif word == "and":
            i += 1
        else:
            end = _until(words, i, _NP_STOPS)
            name_end = end
            if end < len(words) and words[end] in _NAME_MARKERS:
                name_end = _until(words, end + 1, _NP_STOPS)
            character = _character(words[i:end], words[end + 1:name_end])
            if character:
                characters.append(character)
            i = name_end
    return characters, place, []


# --- Building the sentence -------------------------------------------------------

_A_BEFORE_VOWEL = ("uni", "use", "usu", "ut", "eu", "ewe", "one", "once", "ufo")
_AN_BEFORE_H = ("hour", "honest", "honor", "heir")


def _article_for(word: str) -> str:
    word = word.lower()
    if word.startswith(_A_BEFORE_VOWEL):
        return "a"
    if word.startswith(_AN_BEFORE_H):
        return "an"
    first = unicodedata.normalize("NFD", word)[:1]
    return "an" if first in ("a", "e", "i", "o", "u") else "a"


def _finish(words: list[str]) -> str:
    """Capitals, articles and a full stop on a list of lowercase words."""
    out = list(words)
    for k, word in enumerate(out):
        previous = out[k - 1] if k else ""
        if previous in ("named", "called") or (word in _NAMES and previous not in _DETERMINERS):
            out[k] = _capitalize(word)
        elif word == "i" or word.startswith("i'"):
            out[k] = "I" + word[1:]
        elif word in ("a", "an") and k + 1 < len(out) and out[k + 1][:1].isalpha():
            out[k] = _article_for(out[k + 1])
    sentence = " ".join(out)
    return sentence[:1].upper() + sentence[1:] + "."


def _opener_length(words: list[str]) -> int:
    for opener in _OPENERS:
        if tuple(words[: len(opener)]) == opener:
            return len(opener)
    if words[:1] == ["one"] and len(words) >= 3 and words[2] in _PARTS_OF_DAY:
        return 3  # "one sunny day"
    return 0


def _from_spoken_opening(words: list[str]) -> list[str] | None:
    """'once upon a time there was a cat' -> words of 'Once upon a time, there was a cat.'"""
    if tuple(words[:2]) in _THERE:
        words = ["once", "upon", "a", "time"] + words
    length = _opener_length(words)
    if not length or set(words[length:]) <= _THERE_WORDS:
        return None
    return words[: length - 1] + [words[length - 1] + ","] + words[length:]


def _surprise(seed: int, source_words: int) -> Shaped:
    opening = SURPRISE_OPENINGS[seed % len(SURPRISE_OPENINGS)]
    _LOGGER.debug("surprise opening %d (from %d usable words)", seed % len(SURPRISE_OPENINGS), source_words)
    return Shaped(opening, "surprise")


def shape_prompt(text: str, *, seed: int = 0) -> Shaped:
    """Turn a transcript or typed prompt into a story opening (see module doc for the rule)."""
    if not is_request(text):
        return Shaped(text, "passthrough")
    words = _words(text)
    topic, asked = _strip_request(words)
    topic, truncated = _cap_topic(topic)
    if truncated:
        _LOGGER.info("request capped at %d words", MAX_TOPIC_WORDS)
    source: Source = "request" if asked else "topic"
    if not topic:
        return _surprise(seed, len(words))

    if _opener_length(topic) or tuple(topic[:2]) in _THERE:
        opening = _from_spoken_opening(topic)
        if opening is None:
            return _surprise(seed, len(words))
        return Shaped(_finish(opening), source, truncated=truncated)
    if topic[0] in _CLAUSE_STARTS:
        if len(topic) == 1:
            return _surprise(seed, len(words))
        return Shaped(_finish(["once", "upon", "a", "time,", *topic[1:]]), source, truncated=truncated)

    characters, place, clause = _parse_subject(topic)
    if len(characters) > MAX_CHARACTERS:
        _LOGGER.info("kept %d of %d characters", MAX_CHARACTERS, len(characters))
        characters, truncated = characters[:MAX_CHARACTERS], True
    if not characters and not place and not clause:
        return _surprise(seed, len(words))
    if not characters:
        hero = PLACE_HEROES[seed % len(PLACE_HEROES)].split()
        characters = [_Character(("a", *hero), "", False)]

    rendered = [" ".join(c.words) for c in characters]
    subject = ", ".join(rendered[:-1]) + " and " + rendered[-1] if len(rendered) > 1 else rendered[0]
    opening = ["once", "upon", "a", "time,", "there", "were" if characters[0].plural else "was", subject]
    if place:
        opening += ["who", "lived", *place]
        # "who lived in the forest who can fly" reads badly; join the two clauses.
        if clause[:1] in (["who"], ["that"]):
            clause = ["and", *clause[1:]]
    opening += clause
    return Shaped(
        _finish(" ".join(opening).split()),
        source,
        characters=tuple(rendered),
        names=tuple(c.name for c in characters if c.name),
        place=" ".join(place),
        truncated=truncated,
    )


def describe(shaped: Shaped) -> str:
    """One line for the console: how the opening was made, and the opening."""
    how = {
        "passthrough": "kept as typed",
        "request": "reshaped from a request",
        "topic": "reshaped from a topic",
        "surprise": "nothing usable heard: surprise opening",
    }[shaped.source]
    details = [f"characters: {'; '.join(shaped.characters)}"] if shaped.characters else []
    if shaped.place:
        details.append(f"place: {shaped.place}")
    if shaped.truncated:
        details.append("request was capped")
    extra = f" ({', '.join(details)})" if details else ""
    return f"[{shaped.source}] {how}{extra}: {shaped.opening!r}"
