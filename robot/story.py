"""A story as the robot tells it: whole sentences only, filtered, and longer than one context."""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field

from .engine import Engine, Params
from .sentences import DEFAULT_MAX_CHARS, SentenceBuffer, split_sentences
from .wordfilter import WordFilter

_LOGGER = logging.getLogger(__name__)

# A sentence that ends the way robot.sentences ends one: a terminator, then closers.
_SENTENCE_END = re.compile("[.!?\u2026][\"')\\]}\u201d\u2019\u00bb]*$")


@dataclass(frozen=True)
class StorySettings:
    """How long a story may grow and how it is carried from one context to the next."""

    contexts: int = 1
    """Model contexts the story may span (count); 0 for as many as max_words needs."""
    max_words: int = 0
    """The story ends with the sentence that reaches this many spoken words; 0 for no limit."""
    overlap_sentences: int = 3
    """Last spoken sentences that prompt the next context (count); fewer if they do not fit."""
    max_sentence_chars: int = DEFAULT_MAX_CHARS
    """Longest sentence (characters); give tell() the same so it splits alike."""

    def __post_init__(self) -> None:
        if self.contexts < 0 or self.max_words < 0 or self.overlap_sentences < 1:
            raise ValueError("contexts and max_words must be >= 0, overlap_sentences >= 1")
        if self.contexts == 0 and self.max_words == 0:
            raise ValueError("a story of unlimited contexts needs a max_words limit")


@dataclass
class StoryStats:
    """What the story did, across all its contexts."""

    contexts: int = 0
    tokens: int = 0
    """Positions run in all contexts, each context's prompt included."""
    sentences: int = 0
    """Sentences released to be spoken."""
    words: int = 0
    """Words in those sentences."""
    blocked: int = 0
    """Sentences the word filter kept from being spoken."""
    dropped: list[str] = field(default_factory=list)
    """Unfinished sentences cut off where a context ran out, not spoken."""
    finish_reason: str = ""
    """"end" (the model ended it), "length" (steps or contexts ran out), "words"
    (max_words reached) or "stopped" (the engine was stopped)."""


def is_complete(sentence: str) -> bool:
    """Whether a sentence ends with sentence punctuation (closing quotes allowed)."""
    return bool(_SENTENCE_END.search(sentence))


class Story:
    """The sentences of one story, released as soon as each is known to be finished.

    The engine's text is split into sentences as it streams. When the step budget or
    the context runs out mid-sentence the unfinished sentence is dropped, so the story
    ends on a whole sentence; a story the model ends itself keeps its tail. With more
    than one context, a full context is followed by a new one prompted with the last
    spoken sentences, which are not spoken again. Each sentence is checked against the
    word filter before it is released; a blocked one is skipped and the story goes on.

    Iterating a Story starts it (on the engine, which must not tell anything else
    meanwhile) and yields pieces for robot.tell.tell(): one per engine piece, "" while
    a sentence is being generated, then the finished sentence with a line break that
    makes tell's sentence buffer finish it at once. sentences() yields the sentences.
    """

    def __init__(
        self,
        engine: Engine,
        prompt: str | None,
        params: Params = Params(),
        settings: StorySettings = StorySettings(),
        *,
        word_filter: WordFilter | None = None,
        on_sentence: Callable[[str], None] | None = None,
        story: int | None = None,
    ) -> None:
        """on_sentence(text) is called in the iterating thread as each sentence is released.
        story: the engine's number for it (Engine.new_story), so that engine.stop(story)
        ends every context of it, even before the first begins; None takes a new one."""
        self.engine = engine
        self.story = story
        self.prompt = prompt
        self.params = params
        self.settings = settings
        self.word_filter = word_filter
        self.on_sentence = on_sentence
        self.stats = StoryStats()
        self._recent: deque[str] = deque(maxlen=settings.overlap_sentences)
        self._skip = 0  # sentences still to come that a continuation prompt repeats

    def __iter__(self) -> Iterator[str]:
        for released in self._run():
            yield "".join(f"{sentence}\n" for sentence in released)

    def sentences(self) -> Iterator[str]:
        """The sentences to speak, one at a time."""
        for released in self._run():
            yield from released

    def _run(self) -> Iterator[list[str]]:
        """Tell the story; yield the sentences each engine piece releases (often none)."""
        self.stats = StoryStats()
        self._recent.clear()
        self._skip = 0
        prompt = self.prompt
        if self.story is None:
            self.story = self.engine.new_story()
        while True:
            self.stats.contexts += 1
            spoken_before = self.stats.sentences
            buffer = SentenceBuffer(self.settings.max_sentence_chars)
            try:
                with closing(self.engine.generate(prompt, self.params, self.story)) as pieces:
                    for piece in pieces:
                        yield self._release(buffer.feed(piece))
                        if self._enough_words():
                            self.stats.finish_reason = "words"
                            return
            finally:
                self.stats.tokens += self.engine.stats.tokens
            reason = self.engine.stats.finish_reason
            _LOGGER.info(
                "Context %d ended (%s) after %d tokens",
                self.stats.contexts, reason, self.engine.stats.tokens,
            )
            yield self._release(self._ending(buffer.flush(), reason))
            self.stats.finish_reason = "words" if self._enough_words() else reason
            if self.stats.finish_reason != "length" or not self._may_continue(spoken_before):
                return
            prompt = self._continuation()
            if prompt is None:
                return

    def _ending(self, tail: list[str], reason: str) -> list[str]:
        """The sentences of the tail to speak: all if the model ended the story,
        else those up to the first unfinished one."""
        if reason == "end":
            return tail
        kept = 0
        while kept < len(tail) and is_complete(tail[kept]):
            kept += 1
        if kept < len(tail):
            dropped = " ".join(tail[kept:])
            self.stats.dropped.append(dropped)
            _LOGGER.info("Dropped the unfinished sentence %r (%s)", dropped, reason)
        return tail[:kept]

    def _release(self, sentences: list[str]) -> list[str]:
        released = []
        for sentence in sentences:
            if self._skip:
                # The continuation prompt's echo, spoken already. Its last sentence may
                # have been run on by the model ('"Hi!" she said.'): that goes too.
                self._skip -= 1
                continue
            if self._enough_words():
                break
            if self.word_filter is not None and not self.word_filter.is_clean(sentence):
                self.stats.blocked += 1
                _LOGGER.info(
                    "Skipped a sentence with blocked words: %s",
                    ", ".join(self.word_filter.blocked(sentence)),
                )
                continue
            self.stats.sentences += 1
            self.stats.words += len(sentence.split())
            self._recent.append(sentence)
            if self.on_sentence is not None:
                self.on_sentence(sentence)
            released.append(sentence)
        return released

    def _enough_words(self) -> bool:
        return 0 < self.settings.max_words <= self.stats.words

    def _may_continue(self, spoken_before: int) -> bool:
        limit = self.settings.contexts
        if limit and self.stats.contexts >= limit:
            return False
        # A context that added nothing would be followed by the same prompt again.
        if self.stats.sentences == spoken_before:
            _LOGGER.info("Context %d added no sentence; the story ends", self.stats.contexts)
            return False
        return True

    def _continuation(self) -> str | None:
        """A prompt of the last spoken sentences that fits in half a context, or None.

        The prompt must split back into exactly its sentences, so that the first of
        them the new context echoes can be counted off and not spoken twice.
        """
        seq_len = self.engine.info.seq_len
        steps = self.params.steps
        budget = seq_len if steps <= 0 or steps > seq_len else steps
        recent = list(self._recent)
        for count in range(len(recent), 0, -1):
            chosen = recent[-count:]
            prompt = " ".join(chosen)
            if split_sentences(prompt, self.settings.max_sentence_chars) != chosen:
                continue
            tokens = len(self.engine.tokenize(prompt))
            if tokens <= budget // 2:
                _LOGGER.info(
                    "Context %d continues from the last %d sentence(s), %d tokens",
                    self.stats.contexts + 1, count, tokens,
                )
                self._skip = count
                return prompt
        _LOGGER.info("No recent sentence fits a new context; the story ends")
        return None
