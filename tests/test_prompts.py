"""Tests for robot.prompts: transcripts to story openings, and typed text left alone."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from robot.prompts import (
    MAX_CHARACTERS,
    PLACE_HEROES,
    SURPRISE_OPENINGS,
    Shaped,
    describe,
    is_request,
    shape_prompt,
)

SURPRISE_0 = SURPRISE_OPENINGS[0]
ONCE = "Once upon a time, there was "

# (what was heard or typed, exact opening with seed 0, source)
CASES = [
    # requests, politeness and filler
    ("tell me a story about a dragon named max", ONCE + "a dragon named Max.", "request"),
    ("about a dragon named max", ONCE + "a dragon named Max.", "request"),
    ("um uh please can you tell me a story about a brave little turtle",
     ONCE + "a brave little turtle.", "request"),
    ("hey robot could you tell me a story about a rabbit", ONCE + "a rabbit.", "request"),
    ("i want a story about a pirate", ONCE + "a pirate.", "request"),
    ("could you tell me a story about foxes thank you", ONCE + "a little fox.", "request"),
    ("tell me a dragon story please", ONCE + "a dragon.", "request"),
    ("tell me a story about a cat please robot", ONCE + "a cat.", "request"),
    ("tell me a fairy tale", ONCE + "a fairy.", "request"),
    # names
    ("a cat named mister whiskers", ONCE + "a cat named Mister Whiskers.", "topic"),
    ("a story with a girl called ruby in a big house",
     ONCE + "a girl named Ruby who lived in a big house.", "request"),
    ("lily and tom", ONCE + "a little girl named Lily and a little boy named Tom.", "topic"),
    ("named max", ONCE + "a little boy named Max.", "topic"),
    ("a lot of dogs named rex", "Once upon a time, there were many dogs named Rex.", "topic"),
    # several characters
    ("a story about a cat and a dog", ONCE + "a cat and a dog.", "request"),
    ("tell me a story about a princess named lily and a frog named bob",
     ONCE + "a princess named Lily and a frog named Bob.", "request"),
    ("two cats and a dog", "Once upon a time, there were two cats and a dog.", "topic"),
    ("a story about cats and dogs", ONCE + "a little cat and a little dog.", "request"),
    # places
    ("tell me a story in the forest", ONCE + "a little fox who lived in the forest.", "request"),
    ("on the moon", ONCE + "a little fox who lived on the moon.", "topic"),
    ("a story about a fox at the beach", ONCE + "a fox who lived at the beach.", "request"),
    ("tell me a story about an owl on the moon", ONCE + "an owl who lived on the moon.", "request"),
    ("a princess and a frog in a castle", ONCE + "a princess and a frog who lived in a castle.", "topic"),
    ("i'd like a story about a mermaid under the sea please",
     ONCE + "a mermaid who lived under the sea.", "request"),
    # clauses
    ("a dragon who loves cake", ONCE + "a dragon who loves cake.", "topic"),
    ("a dragon in the castle who loves cake",
     ONCE + "a dragon who lived in the castle and loves cake.", "topic"),
    ("a dragon with no name", ONCE + "a dragon with no name.", "topic"),
    ("tell me a story where a cat can fly", "Once upon a time, a cat can fly.", "request"),
    ("tell me a story about how the cat got its hat", "Once upon a time, the cat got its hat.", "request"),
    # bare topics and plurals
    ("dinosaurs", ONCE + "a little dinosaur.", "topic"),
    ("tell me a story about mice", ONCE + "a little mouse.", "request"),
    ("tell me about the princesses", ONCE + "a little princess.", "request"),
    ("i really like dragons", ONCE + "a little dragon.", "request"),
    ("the little robot", ONCE + "a little robot.", "topic"),
    ("a story about my dog", ONCE + "a dog.", "request"),
    # numbers
    ("three little pigs", "Once upon a time, there were three little pigs.", "topic"),
    ("a story about the three little pigs", "Once upon a time, there were three little pigs.", "request"),
    ("3 cats", "Once upon a time, there were three cats.", "topic"),
    ("one dragon", ONCE + "a dragon.", "topic"),
    ("i want a story about a lot of puppies", "Once upon a time, there were many puppies.", "request"),
    # articles
    ("hey robot tell me a story about a elephant", ONCE + "an elephant.", "request"),
    ("tell me a story about an dog", ONCE + "a dog.", "request"),
    ("story about dragon", ONCE + "a dragon.", "request"),
    ("a story about a old owl", ONCE + "an old owl.", "request"),
    ("a story about an unicorn", ONCE + "a unicorn.", "request"),
    # noise, repeats and mishearings
    ("tell me a story about a a dragon", ONCE + "a dragon.", "request"),
    ("a very very big dog", ONCE + "a very big dog.", "topic"),
    ("tell me a story about a dragon [unk] named max", ONCE + "a dragon named Max.", "request"),
    ("tell me uh a story about the uh dragon", ONCE + "a dragon.", "request"),
    ("tell me a glory about a cat", ONCE + "a cat.", "request"),
    ("tell me a story a bout a cat", ONCE + "a cat.", "request"),
    ("tell me a story about a dog name max", ONCE + "a dog named Max.", "request"),
    ("tell me a story about a cat and", ONCE + "a cat.", "request"),
    # very long: capped between words, at a join where there is one
    ("tell me a story about a dragon who flies over the mountains and eats all the pizza in the world "
     "and then goes to sleep for a very long time in a cave",
     ONCE + "a dragon who flies over the mountains and eats all the pizza in the world.", "request"),
    ("a cat and a dog and a bird and a fish and a frog and a snake",
     ONCE + "a cat, a dog, a bird and a fish.", "topic"),
    # the child starts the story
    ("once upon a time there was a cat named tom", ONCE + "a cat named Tom.", "topic"),
    ("one day lily found a ball", "One day, Lily found a ball.", "topic"),
    ("one sunny day a bird sang", "One sunny day, a bird sang.", "topic"),
    ("there was a big dog", ONCE + "a big dog.", "topic"),
    # non-ASCII
    ("tell me a story about a bear named zoë", ONCE + "a bear named Zoë.", "request"),
    ("tell me a story about a dragón named josé", ONCE + "a dragón named José.", "request"),
    ("a story about a éléphant", ONCE + "an éléphant.", "request"),
    ("a story about a cat 🙂", ONCE + "a cat.", "request"),
    # typed requests (capitals and punctuation, but a request phrase)
    ("Tell me a story about a dragon named Max!", ONCE + "a dragon named Max.", "request"),
    ("Please, can you tell me a story?", SURPRISE_0, "surprise"),
    # nothing usable: surprise
    ("", SURPRISE_0, "surprise"),
    ("   ", SURPRISE_0, "surprise"),
    ("um uh", SURPRISE_0, "surprise"),
    ("[unk]", SURPRISE_0, "surprise"),
    ("[unk] [unk] um", SURPRISE_0, "surprise"),
    ("tell me a story", SURPRISE_0, "surprise"),
    ("a story", SURPRISE_0, "surprise"),
    ("hey robot", SURPRISE_0, "surprise"),
    ("please please", SURPRISE_0, "surprise"),
    ("once upon a time", SURPRISE_0, "surprise"),
    ("tell me a story about", SURPRISE_0, "surprise"),
]


@pytest.mark.parametrize(("heard", "opening", "source"), CASES, ids=[c[0] or "<empty>" for c in CASES])
def test_table(heard, opening, source):
    shaped = shape_prompt(heard)
    assert (shaped.opening, shaped.source) == (opening, source)


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


def test_place_hero_is_chosen_by_seed():
    openings = [shape_prompt("in the forest", seed=s).opening for s in range(len(PLACE_HEROES))]
    assert openings == [f"{ONCE}a {hero} who lived in the forest." for hero in PLACE_HEROES]


def test_seed_does_not_change_a_clear_request():
    assert {shape_prompt("a cat named tom", seed=s).opening for s in range(10)} == {ONCE + "a cat named Tom."}


def test_details_are_reported():
    shaped = shape_prompt("tell me a story about a princess named lily and a frog named bob in the forest")
    assert shaped == Shaped(
        opening=ONCE + "a princess named Lily and a frog named Bob who lived in the forest.",
        source="request",
        characters=("a princess named Lily", "a frog named Bob"),
        names=("Lily", "Bob"),
        place="in the forest",
        truncated=False,
    )


def test_too_many_characters_are_capped_and_flagged():
    shaped = shape_prompt(
        "tell me a story about a cat and a dog and a bird and a fish and a frog and a snake"
    )
    assert shaped.opening == ONCE + "a cat, a dog, a bird and a fish."
    assert len(shaped.characters) == MAX_CHARACTERS
    assert shaped.truncated


def test_long_transcript_is_cut_between_words_at_a_join():
    heard = ("tell me a story about a dragon who flies over the mountains and eats all the pizza "
             "in the world and then goes to sleep for a very long time in a cave")
    shaped = shape_prompt(heard)
    assert shaped.opening == (
        ONCE + "a dragon who flies over the mountains and eats all the pizza in the world."
    )
    assert shaped.truncated


def test_very_long_transcript_stays_short_and_whole_worded():
    heard = " ".join(["a big friendly dragon who likes cake and a tiny cat who sings"] * 200)
    shaped = shape_prompt(heard)
    assert shaped.truncated
    assert len(shaped.opening.split()) < 40
    said = set(heard.split()) | {"once", "upon", "time", "there", "was"}
    assert all(word.strip(",.").lower() in said for word in shaped.opening.split())


CLEAN = re.compile(r"[A-Z][^\s]*(?: [^\s]+)*\.")
VOCABULARY = ["tell", "me", "a", "story", "about", "the", "and", "named", "called", "in", "on", "who", "with",
              "um", "[unk]", "please", "dragon", "dragons", "max", "lily", "elephant", "an", "three", "where",
              "once", "upon", "time", "there", "was", "one", "day", "forest", "little", "café", "i", "x"]


@given(st.lists(st.sampled_from(VOCABULARY), max_size=40), st.integers(min_value=-5, max_value=10**6))
def test_reshaped_openings_are_clean(words, seed):
    shaped = shape_prompt(" ".join(words), seed=seed)
    assert shaped.source != "passthrough"
    assert CLEAN.fullmatch(shaped.opening), shaped.opening
    assert " ," not in shaped.opening and ",." not in shaped.opening and ".." not in shaped.opening


@given(st.text())
def test_any_text_either_passes_through_or_is_clean(text):
    shaped = shape_prompt(text)
    if shaped.source == "passthrough":
        assert shaped.opening == text
    else:
        assert CLEAN.fullmatch(shaped.opening), shaped.opening


def test_describe_for_the_console():
    assert describe(shape_prompt("Lily wanted a red balloon")) == (
        "[passthrough] kept as typed: 'Lily wanted a red balloon'"
    )
    assert describe(shape_prompt("a fox at the beach")) == (
        "[topic] reshaped from a topic (characters: a fox, place: at the beach): "
        f"'{ONCE}a fox who lived at the beach.'"
    )
    assert describe(shape_prompt("um")).startswith("[surprise] nothing usable heard")
