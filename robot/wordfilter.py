"""Word filter for what the robot hears and what it says aloud to a child.

A ``WordFilter`` holds a list of blocked words and phrases (the default one
is ``robot/data/blocked_words.txt``; its header says what is on it and why).
Matching is case-insensitive and by whole word, so "class" never matches
"ass" and "Scunthorpe" never matches anything (the Scunthorpe problem).
Each blocked word also matches its simple suffix forms: plural and
possessive ("guns", "gun's"), and verb forms ("killed", "killing",
"killer", "stabbed").  A phrase ("blow job") matches its words in a row,
with the suffix forms allowed on its last word only.

Deliberately not handled: spellings hidden with symbols ("sh*t") and words
run together with others; speech recognition and the story model produce
neither, and chasing them brings back false positives.

Typical use::

    words = WordFilter.default()
    transcript = words.clean_transcript(transcript)   # before prompting
    if not words.is_clean(sentence): ...              # before speaking
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

DEFAULT_LIST = Path(__file__).with_name("data") / "blocked_words.txt"

# A word is letters or digits, with apostrophes allowed inside ("don't");
# everything else, hyphens included, separates words.
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_VOWELS = frozenset("aeiou")


def _normalize(word: str) -> str:
    return word.casefold().replace("\u2019", "'")


def _forms(word: str) -> frozenset[str]:
    """The word and the simple suffix forms it may take in running text."""
    forms = {word, word + "s", word + "'s"}
    if word.endswith(("s", "x", "z", "ch", "sh")):
        forms.add(word + "es")
    if word.endswith("e"):
        forms |= {word + "d", word + "r", word + "rs", word[:-1] + "ing"}
    else:
        forms |= {word + "ed", word + "er", word + "ers", word + "ing"}
    # Short consonant-vowel-consonant words double the last letter: stab -> stabbed.
    if (
        len(word) >= 3
        and word[-1] not in _VOWELS | {"w", "x", "y"}
        and word[-2] in _VOWELS
        and word[-3] not in _VOWELS
    ):
        doubled = word + word[-1]
        forms |= {doubled + "ed", doubled + "er", doubled + "ers", doubled + "ing"}
    if len(word) > 2 and word.endswith("y") and word[-2] not in _VOWELS:
        forms |= {word[:-1] + "ies", word[:-1] + "ied"}
    return frozenset(forms)


class WordFilter:
    """Whole-word, case-insensitive matcher for a list of blocked words and phrases."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._entries: set[str] = set()
        self._words: set[str] = set()
        # Phrases as (leading words, forms of the last word).
        self._phrases: list[tuple[tuple[str, ...], frozenset[str]]] = []
        for entry in entries:
            tokens = [_normalize(m.group()) for m in _WORD.finditer(entry)]
            if not tokens:
                continue
            self._entries.add(" ".join(tokens))
            if len(tokens) == 1:
                self._words |= _forms(tokens[0])
            else:
                self._phrases.append((tuple(tokens[:-1]), _forms(tokens[-1])))

    @classmethod
    def from_file(cls, path: str | Path) -> WordFilter:
        """Load a list: one word or phrase a line; ``#`` starts a comment."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        word_filter = cls(line.split("#", 1)[0] for line in lines)
        _LOGGER.debug("loaded %d blocked entries from %s", len(word_filter.entries), path)
        return word_filter

    @classmethod
    def default(cls) -> WordFilter:
        """The list shipped with the robot, ``robot/data/blocked_words.txt``."""
        return cls.from_file(DEFAULT_LIST)

    @property
    def entries(self) -> tuple[str, ...]:
        """The normalized words and phrases this filter blocks, sorted."""
        return tuple(sorted(self._entries))

    def _spans(self, text: str) -> list[tuple[int, int]]:
        matches = list(_WORD.finditer(text))
        tokens = [_normalize(m.group()) for m in matches]
        spans = []
        i = 0
        while i < len(tokens):
            length = self._match_length(tokens, i)
            if length:
                spans.append((matches[i].start(), matches[i + length - 1].end()))
                i += length
            else:
                i += 1
        return spans

    def _match_length(self, tokens: list[str], i: int) -> int:
        """How many tokens from ``i`` on form a blocked entry (0 if none); longest wins."""
        best = 1 if tokens[i] in self._words else 0
        for head, last_forms in self._phrases:
            end = i + len(head)
            if end < len(tokens) and tuple(tokens[i:end]) == head and tokens[end] in last_forms:
                best = max(best, len(head) + 1)
        return best

    def blocked(self, text: str) -> list[str]:
        """The blocked words and phrases in ``text``, as written there, in order."""
        return [text[start:end] for start, end in self._spans(text)]

    def is_clean(self, text: str) -> bool:
        return not self._spans(text)

    def clean_transcript(self, text: str) -> str:
        """``text`` with blocked words removed and whitespace collapsed to single spaces."""
        spans = self._spans(text)
        if not spans:
            return " ".join(text.split())
        pieces = []
        previous = 0
        for start, end in spans:
            pieces.append(text[previous:start])
            previous = end
        pieces.append(text[previous:])
        # Count only: what a child said is not for the log.
        _LOGGER.info("removed %d blocked word(s) from a transcript", len(spans))
        return " ".join(" ".join(pieces).split())
