"""Tests for robot.prompts: transcripts to story openings, and typed text left alone."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openings import grammatical, vocabulary
from robot.prompts import (
    MAX_CHARACTERS,
    PLACE_HEROES,
    SURPRISE_OPENINGS,
    VOCABULARY,
    Shaped,
    describe,
    is_request,
    shape_prompt,
)
from robot.wordfilter import WordFilter

SURPRISE_0 = SURPRISE_OPENINGS[0]
ONCE = "Once upon a time, there was "

# (what was heard or typed, exact opening with seed 0, source)
CASES = [
    # requests, politeness and filler
    ("tell me a story about a dragon named max", ONCE + "a dragon named Max.", "request"),
    ("about a dragon named max", ONCE + "a dragon named Max.", "request"),
    ("um uh please can you tell me a story about a happy little turtle",
     ONCE + "a happy little turtle.", "request"),
    ("hey robot could you tell me a story about a rabbit", ONCE + "a rabbit.", "request"),
    ("i want a story about a princess", ONCE + "a princess.", "request"),
    ("could you tell me a story about foxes thank you", ONCE + "a little fox.", "request"),
    ("tell me a dragon story please", ONCE + "a dragon.", "request"),
    ("tell me a story about a cat please robot", ONCE + "a cat.", "request"),
    # what the recognizer heard: the known subject stays, the rest goes
    ("can you do me a story about resist the frog", ONCE + "a frog.", "request"),
    ("while story about a dinosaur i see so", ONCE + "a dinosaur.", "request"),
    ("well you see i was funny", SURPRISE_0, "surprise"),
    # names
    ("a girl called lily in a big garden", ONCE + "a girl named Lily who lived in a big garden.", "topic"),
    ("lily and tim", ONCE + "a little girl named Lily and a little boy named Tim.", "topic"),
    ("a dog name max", ONCE + "a dog named Max.", "topic"),
    ("a cat named xyzzy", ONCE + "a cat.", "topic"),
    # several characters
    ("a story about a cat and a dog", ONCE + "a cat and a dog.", "request"),
    ("tell me a story about a princess named lily and a frog named max",
     ONCE + "a princess named Lily and a frog named Max.", "request"),
    ("two cats and a dog", "Once upon a time, there were two cats and a dog.", "topic"),
    ("a story about cats and dogs", ONCE + "a little cat and a little dog.", "request"),
    # places
    ("tell me a story in the forest", ONCE + "a little fox who lived in the forest.", "request"),
    ("the forest", ONCE + "a little fox who lived in the forest.", "topic"),
    ("a story about a fox in the park", ONCE + "a fox who lived in the park.", "request"),
    ("a princess and a frog in a castle", ONCE + "a princess and a frog.", "topic"),
    ("a princess and a frog in the woods", ONCE + "a princess and a frog who lived in the woods.", "topic"),
    # plurals and counts
    ("dinosaurs", ONCE + "a little dinosaur.", "topic"),
    ("tell me a story about mice", ONCE + "a little mouse.", "request"),
    ("three little bunnies", "Once upon a time, there were three little bunnies.", "topic"),
    ("3 cats", "Once upon a time, there were three cats.", "topic"),
    ("i want a story about a lot of puppies", "Once upon a time, there were many puppies.", "request"),
    # articles
    ("tell me a story about a elephant", ONCE + "an elephant.", "request"),
    ("tell me a story about an dog", ONCE + "a dog.", "request"),
    ("story about dragon", ONCE + "a dragon.", "request"),
    # noise and repeats
    ("tell me a story about a a dragon", ONCE + "a dragon.", "request"),
    ("tell me a story about a dragon [unk] named max", ONCE + "a dragon named Max.", "request"),
    ("tell me uh a story about the uh dragon", ONCE + "a dragon.", "request"),
    ("tell me a glory about a cat", ONCE + "a cat.", "request"),
    # the child starts the story
    ("once upon a time there was a little bunny", ONCE + "a little bunny.", "topic"),
    ("there was a big dog", ONCE + "a big dog.", "topic"),
    # typed requests (capitals and punctuation, but a request phrase)
    ("Tell me a story about a dragon named Max!", ONCE + "a dragon named Max.", "request"),
    ("Please, can you tell me a story?", SURPRISE_0, "surprise"),
    # nothing known: surprise
    ("", SURPRISE_0, "surprise"),
    ("   ", SURPRISE_0, "surprise"),
    ("um uh", SURPRISE_0, "surprise"),
    ("[unk] [unk] um", SURPRISE_0, "surprise"),
    ("tell me a story", SURPRISE_0, "surprise"),
    ("hello", SURPRISE_0, "surprise"),
    ("i am hungry", SURPRISE_0, "surprise"),
    ("tell me a story about a zorblax", SURPRISE_0, "surprise"),
    ("tell me a story about a café 🙂", SURPRISE_0, "surprise"),
]


@pytest.mark.parametrize(("heard", "opening", "source"), CASES, ids=[c[0] or "<empty>" for c in CASES])
def test_table(heard, opening, source):
    shaped = shape_prompt(heard)
    assert (shaped.opening, shaped.source) == (opening, source)
    assert grammatical(shaped.opening), shaped.opening


def test_the_table_is_big_enough():
    assert len(CASES) >= 45


PASSTHROUGH = [
    "Once upon a time",
    "Lily wanted a red balloon",
    "The little robot",
    "Tom and his dog went to the park",
    "  two leading spaces",
    'Emma said, "Look at the café!" 🙂',
    "Once upon a time, there was a girl named Lily.",
    "Can you help me? asked the bird.",
    "About a week ago, Tom found a shell.",
    "one\ttab",
    "trailing space ",
    "two  spaces inside",
    "Um",
]


@pytest.mark.parametrize("typed", PASSTHROUGH)
def test_story_text_passes_through_byte_for_byte(typed):
    shaped = shape_prompt(typed, seed=5)
    assert shaped.source == "passthrough"
    assert shaped.opening.encode("utf-8") == typed.encode("utf-8")
    assert not is_request(typed)


@pytest.mark.parametrize(
    "text",
    ["tell me a story", "dinosaurs", "don't stop", "", " ", "[unk]", "TELL ME A STORY", "Story about a cat.",
     "Hey, robot! Tell me a story.", "I want a story!", "Could you tell me a story about Max?"],
)
def test_is_request(text):
    assert is_request(text)


def test_surprise_choice_is_deterministic_by_seed():
    for seed in range(3 * len(SURPRISE_OPENINGS)):
        first = shape_prompt("um", seed=seed)
        assert first == shape_prompt("um", seed=seed)
        assert first.opening == SURPRISE_OPENINGS[seed % len(SURPRISE_OPENINGS)]
    assert {shape_prompt("", seed=s).opening for s in range(len(SURPRISE_OPENINGS))} == set(SURPRISE_OPENINGS)


def test_surprises_and_heroes_are_of_the_same_form():
    assert all(grammatical(opening) for opening in SURPRISE_OPENINGS)
    openings = [shape_prompt("in the forest", seed=s).opening for s in range(len(PLACE_HEROES))]
    assert openings == [f"{ONCE}a {hero} who lived in the forest." for hero in PLACE_HEROES]
    assert all(grammatical(opening) for opening in openings)


def test_seed_does_not_change_a_clear_request():
    assert {shape_prompt("a cat named tim", seed=s).opening for s in range(10)} == {ONCE + "a cat named Tim."}


def test_details_are_reported():
    shaped = shape_prompt("tell me a story about a princess named lily and a frog named max in the forest")
    assert shaped == Shaped(
        opening=ONCE + "a princess named Lily and a frog named Max who lived in the forest.",
        source="request",
        characters=("a princess named Lily", "a frog named Max"),
        names=("Lily", "Max"),
        place="in the forest",
        truncated=False,
    )


def test_too_many_characters_are_capped_and_flagged():
    shaped = shape_prompt("a cat and a dog and a bird and a frog and a bee and a fox")
    assert shaped.opening == ONCE + "a cat, a dog, a bird and a frog."
    assert len(shaped.characters) == MAX_CHARACTERS
    assert shaped.truncated


def test_a_long_transcript_is_read_only_so_far():
    heard = " ".join(["a big dragon who likes cake and a little cat who sings"] * 200)
    shaped = shape_prompt(heard)
    assert shaped.truncated
    assert shaped.opening == ONCE + "a big dragon and a little cat."


def test_the_vocabulary_is_derived_and_blocks_nothing():
    text = VOCABULARY.read_text(encoding="utf-8")
    assert text.startswith("# Derived by robot/dev/vocabulary.py")
    words = WordFilter.default()
    every = [word for kind in vocabulary().values() for word in kind]
    assert len(every) > 100
    assert [w for w in every if not words.is_clean(w)] == []
    assert {"frog", "dinosaur", "dragon", "princess", "cat", "dog"} <= set(vocabulary()["subject"])


# Transcripts for the hypothesis tests: the vocabulary's own words, request words,
# words it does not know, blocked words, numbers and noise, in any order.
_KNOWN = sorted({w for kind in ("subject", "adjective", "place", "girl", "boy", "pet")
                 for w in vocabulary()[kind]})
_OTHER = ["tell", "me", "a", "an", "the", "story", "about", "and", "named", "called", "name", "in", "on",
          "under", "who", "likes", "um", "[unk]", "please", "three", "many", "a lot of", "3", "once",
          "upon", "time", "there", "was", "were", "resist", "see", "i", "funny", "café", "x", "s",
          "dinosaurs", "mice", "puppies", "foxes"]
_BLOCKED = list(WordFilter.default().entries)
_WORDS = st.one_of(st.sampled_from(_KNOWN), st.sampled_from(_OTHER), st.sampled_from(_BLOCKED))


@settings(max_examples=500)
@given(st.lists(_WORDS, max_size=30), st.integers(min_value=-5, max_value=10**6))
def test_every_opening_from_a_transcript_is_grammatical_and_clean(words, seed):
    shaped = shape_prompt(" ".join(words), seed=seed)
    assert shaped.source != "passthrough"
    assert grammatical(shaped.opening), shaped.opening
    assert WordFilter.default().is_clean(shaped.opening), shaped.opening


@given(st.text())
def test_any_text_either_passes_through_or_is_grammatical(text):
    shaped = shape_prompt(text)
    if shaped.source == "passthrough":
        assert shaped.opening == text
    else:
        assert grammatical(shaped.opening), shaped.opening


@given(st.text())
def test_a_transcript_never_passes_through(text):
    shaped = shape_prompt(text, spoken=True)
    assert shaped.source != "passthrough"
    assert grammatical(shaped.opening), shaped.opening


def test_a_transcript_of_another_language_is_reshaped():
    assert shape_prompt("S [2] 위에 바르", spoken=True).opening == SURPRISE_0
    assert shape_prompt("S [2] 위에 바르").source == "passthrough"  # as typed text


def test_a_subject_heard_is_kept():
    for subject in vocabulary()["subject"]:
        opening = shape_prompt(f"um tell me a story about a {subject} please").opening
        assert f" {subject}." in opening, opening


def test_describe_for_the_console():
    assert describe(shape_prompt("Lily wanted a red balloon")) == (
        "[passthrough] kept as typed: 'Lily wanted a red balloon'"
    )
    assert describe(shape_prompt("a fox in the park")) == (
        "[topic] reshaped from a topic (characters: a fox, place: in the park): "
        f"'{ONCE}a fox who lived in the park.'"
    )
    assert describe(shape_prompt("um")).startswith("[surprise] nothing known heard")
