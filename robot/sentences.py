"""Streaming sentence buffer: text pieces in, finished sentences out."""

from __future__ import annotations

import logging
import unicodedata

_LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_CHARS = 300

# Characters that can end a sentence, and the closers that belong to the sentence
# they follow ('He said "Hi!"' ends after the quote).
_TERMINATORS = frozenset(".!?\u2026")
_CLOSERS = frozenset("\"')]}\u201d\u2019\u00bb")
_OPENERS = "\"'([{\u201c\u2018\u00ab"
# A paragraph break in TinyStories text; it always ends the sentence.
_LINE_BREAKS = frozenset("\n\r\u2028\u2029")
# After a terminator, a lowercase word or one of these means the sentence goes on:
# '"Hi!" she said', '"Stop!", he said', 'Oh... and then'.
_CONTINUERS = frozenset(",;:")
# Words whose "." does not end a sentence, compared in lower case and without the
# final period ("e.g." is seen as "e.g" when its last "." is reached).
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "mt", "jr", "sr", "vs", "e.g", "i.e", "etc"}
)


def _is_abbreviation(word: str) -> bool:
    word = word.lstrip(_OPENERS)
    if word.lower() in _ABBREVIATIONS:
        return True
    # A single capital is an initial ("J. K."), but "I." is the pronoun ending a
    # sentence ("It was I."), which a children's story says far more often.
    return len(word) == 1 and word.isupper() and word != "I"


def _clean(text: str) -> str:
    """Drop control characters and collapse whitespace runs to one space."""
    kept = "".join(
        c for c in text if c.isspace() or unicodedata.category(c) != "Cc"
    )
    return " ".join(kept.split())


def _within_cap(text: str, start: int, end: int, max_chars: int) -> tuple[int, int]:
    """Sentence text[start:end] as (end, resume), cut at a space below the cap if too long."""
    limit = start + max_chars
    if end <= limit:
        return end, end
    for k in range(limit, start, -1):
        if text[k].isspace():
            return k, k
    # One word longer than the cap: cut it, but keep combining marks with their base.
    k = limit
    while k > start + 1 and unicodedata.combining(text[k]):
        k -= 1
    return k, k


def _find_end(text: str, max_chars: int, final: bool) -> tuple[int, int] | None:
    """Find the first sentence of text that is known to be finished.

    Returns (end, resume): the sentence is text[:end] and the rest starts at resume.
    Returns None if more text is needed to decide (or, when final, if there is no
    boundary at all). Every decision looks only at text up to a point that is
    already present, so the answer never changes when more text is appended: that
    is what makes the output independent of how the text was chunked.
    """
    n = len(text)
    start = 0
    while start < n and text[start].isspace():
        start += 1
    i = start
    while i < n:
        if i - start >= max_chars:
            return _within_cap(text, start, i + 1, max_chars)  # text[i] is in it too
        c = text[i]
        if c in _LINE_BREAKS:
            return i, i + 1
        if c not in _TERMINATORS:
            i += 1
            continue
        # A run of terminators and closers: "...", "?!", '."', "!)".
        j = i
        while j < n and (text[j] in _TERMINATORS or text[j] in _CLOSERS):
            j += 1
        if j < n and not text[j].isspace():
            i = j  # "3.5", "e.g", "Hi!Tom": no space, no sentence end
            continue
        # The next non-space character decides; a line break ends the sentence anyway.
        # Until it arrives the run itself may go on ("." may become "...").
        k = j
        while k < n and text[k].isspace() and text[k] not in _LINE_BREAKS:
            k += 1
        if k == n and not final:
            return None
        nxt = text[k] if k < n else ""
        continues = nxt.islower() or nxt in _CONTINUERS
        if text[i:j] == "." and i > start and not text[i - 1].isspace():
            continues = continues or _is_abbreviation(text[start:i].split()[-1])
        if continues:
            i = j
            continue
        return _within_cap(text, start, j, max_chars)
    if final and start < n:
        return _within_cap(text, start, n, max_chars)
    return None


class SentenceBuffer:
    """Collects text pieces and hands out each sentence once it is known to be finished.

    A sentence after "." (or "!", "?", an ellipsis) is only known to be finished when
    the next non-space character arrives, because "Mr." or "..." may continue it and a
    lowercase word after '"Hi!"' continues it; a line break finishes it at once.
    Sentences longer than max_chars characters are cut at the last space before the cap;
    only a single word longer than the cap is cut inside, and never between a letter
    and its combining marks. Pieces are str, so a cut can never split a UTF-8 sequence:
    whoever decodes the generator's bytes must hold back incomplete ones.
    """

    def __init__(self, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, not {max_chars}")
        self.max_chars = max_chars
        self._pending = ""

    def feed(self, piece: str) -> list[str]:
        """Add a piece of text; return the sentences it finished (possibly none)."""
        self._pending += piece
        return self._take(final=False)

    def flush(self) -> list[str]:
        """End of text: return every sentence still pending, the unfinished tail too."""
        sentences = self._take(final=True)
        self._pending = ""
        return sentences

    def _take(self, final: bool) -> list[str]:
        sentences = []
        while (found := _find_end(self._pending, self.max_chars, final)) is not None:
            end, resume = found
            sentence = _clean(self._pending[:end])
            self._pending = self._pending[resume:]
            if sentence:
                _LOGGER.debug("Sentence: %s", sentence)
                sentences.append(sentence)
        return sentences


def split_sentences(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Split a whole text into sentences, exactly as SentenceBuffer would stream them."""
    buffer = SentenceBuffer(max_chars)
    return buffer.feed(text) + buffer.flush()
