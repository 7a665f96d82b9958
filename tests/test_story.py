"""Tests of the story source: whole-sentence endings, context rollover, the word filter.

Real model, real voice. Generation is deterministic for a seed, so a story cut short
must be the prefix of the same story told with more steps.
"""

import pytest
from conftest_audio import joe_synthesizer

from robot.audio import WavSink
from robot.engine import Params
from robot.sentences import split_sentences
from robot.story import Story, StorySettings, is_complete
from robot.tell import tell
from robot.wordfilter import WordFilter

PROMPT = "Once upon a time"
# The golden story: seed 123 ends by itself (BOS) after 205 positions.
GOLDEN = Params(temperature=1.0, topp=0.9, seed=123, steps=256)
# Seed 13 fills its whole context, then ends by itself in a second one.
LONG = Params(temperature=1.0, topp=0.9, seed=13, steps=0)


def uncut(engine, params, prompt=PROMPT):
    """The sentences of a story told in one context, as the engine writes it."""
    text = "".join(engine.generate(prompt, params))
    return split_sentences(text), engine.stats.finish_reason


def spoken(engine, story, tmp_path):
    """The sentences that reached the voice when the story was told into a WAV."""
    report = tell(story, joe_synthesizer(), WavSink(tmp_path / "story.wav"))
    assert not report.cancelled and all(s.audio_seconds > 0 for s in report.sentences)
    return [s.text for s in report.sentences]


def test_story_cut_by_steps_is_spoken_to_its_last_full_sentence(engine, tmp_path):
    full, reason = uncut(engine, GOLDEN)
    assert reason == "end"
    story = Story(engine, PROMPT, Params(seed=123, steps=60))
    said = spoken(engine, story, tmp_path)

    assert story.stats.finish_reason == "length"
    assert said == full[: len(said)] and len(said) >= 3
    assert all(is_complete(s) for s in said)
    # What was dropped is the start of the next sentence of the uncut story.
    [dropped] = story.stats.dropped
    assert not is_complete(dropped) and full[len(said)].startswith(dropped)


def test_story_ended_by_the_model_keeps_its_tail(engine):
    full, _ = uncut(engine, GOLDEN)
    story = Story(engine, PROMPT, GOLDEN)
    assert list(story.sentences()) == full
    assert story.stats.finish_reason == "end" and story.stats.dropped == []
    assert story.stats.contexts == 1 and story.stats.tokens == 205


@pytest.mark.slow  # several contexts of the real model
def test_long_story_continues_across_a_context_rollover(engine):
    story = Story(engine, PROMPT, LONG, StorySettings(contexts=3))
    said = list(story.sentences())
    stats = story.stats
    assert stats.contexts == 2 and stats.tokens > engine.info.seq_len

    # The first context is spoken up to its last full sentence ...
    first, reason = uncut(engine, LONG)
    assert reason == "length"
    n_first = len(first) - 1
    assert said[:n_first] == first[:n_first] and stats.dropped == [first[-1]]
    # ... and the second goes on from the last three, which are not said again.
    overlap = " ".join(first[n_first - 3 : n_first])
    second, _ = uncut(engine, LONG, overlap)
    assert said[n_first:] == second[3:] and len(second) > 4

    assert len(set(said)) == len(said)
    assert all(is_complete(s) for s in said)
    text = " ".join(said)
    assert "  " not in text and "\n" not in text and "<s>" not in text
    assert stats.words == len(text.split()) and stats.sentences == len(said)


def test_max_words_ends_the_story_on_the_sentence_that_reaches_it(engine):
    story = Story(engine, PROMPT, LONG, StorySettings(contexts=0, max_words=40))
    said = list(story.sentences())
    words = [len(s.split()) for s in said]
    assert sum(words) >= 40 > sum(words[:-1])
    assert story.stats.finish_reason == "words" and story.stats.contexts == 1


def test_blocked_words_never_reach_the_voice(engine, tmp_path):
    full, _ = uncut(engine, GOLDEN)
    words = WordFilter(["lily"])
    story = Story(engine, PROMPT, Params(seed=123, steps=100), word_filter=words)
    said = spoken(engine, story, tmp_path)

    assert story.stats.blocked >= 3
    assert all(words.is_clean(s) for s in said) and len(said) >= 2
    # The story went on around what was skipped.
    told = story.stats.blocked + len(said)
    assert said == [s for s in full[:told] if words.is_clean(s)]


def test_unbounded_story_is_refused():
    with pytest.raises(ValueError):
        StorySettings(contexts=0)
