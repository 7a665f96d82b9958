"""Tests of the streaming sentence buffer."""

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot.sentences import SentenceBuffer, split_sentences

STORY = (
    "Once upon a time, there was a little girl named Lily. One day, Lily and her mommy "
    "went to the park. \nLily's mommy said, \"Be careful!\" Lily nodded. Mr. Brown waved... "
    "and smiled. It was 3.5 meters tall, e.g. a tree. Dr. J. Smith came. \"Why?\" she asked. "
    "Wait\u2026 What? Yes!!\n\nThe end."
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there. How are you?", ["Hello there.", "How are you?"]),
        ('He said "Hi!" Then he left.', ['He said "Hi!"', "Then he left."]),
        ('"Hi!" she said. "Bye!"', ['"Hi!" she said.', '"Bye!"']),
        ("(It was fun.) They went home.", ["(It was fun.)", "They went home."]),
        ("Mr. and Mrs. Smith met Ms. Lee.", ["Mr. and Mrs. Smith met Ms. Lee."]),
        ("Dr. Jo is on Elm St. near Mt. Fuji.", ["Dr. Jo is on Elm St. near Mt. Fuji."]),
        ("Tom Jr. won vs. Sam.", ["Tom Jr. won vs. Sam."]),
        ("Bring toys, e.g. a ball. Or i.e. this.", ["Bring toys, e.g. a ball.", "Or i.e. this."]),
        ("J. K. Rowling wrote it. Nice.", ["J. K. Rowling wrote it.", "Nice."]),
        ("It was not I. Who was it?", ["It was not I.", "Who was it?"]),
        ("The pole was 3.5 meters. It fell.", ["The pole was 3.5 meters.", "It fell."]),
        ("She had 3. Then 4.", ["She had 3.", "Then 4."]),
        ("I was... tired. Wait... What?", ["I was... tired.", "Wait...", "What?"]),
        ("Oh\u2026 Then she ran.", ["Oh\u2026", "Then she ran."]),
        ("Really?! Yes.", ["Really?!", "Yes."]),
        ("Hi, Tom. \"Hello,\" said Tom.", ["Hi, Tom.", '"Hello," said Tom.']),
        ("First line\nsecond line", ["First line", "second line"]),
        ("A paragraph.\n\nAnother one.\n", ["A paragraph.", "Another one."]),
        ("No end at all", ["No end at all"]),
        ("  lots   of\tspace .  ", ["lots of space ."]),
        ("Bad\x00 char\x07s.", ["Bad chars."]),
        ("He met Mr.", ["He met Mr."]),
        ("", []),
        (" \n \n ", []),
    ],
)
def test_tricky_cases(text, expected):
    assert split_sentences(text) == expected


def stream(text, sizes, max_chars=300):
    """Feed text in chunks whose sizes cycle through sizes; return every sentence."""
    buffer = SentenceBuffer(max_chars)
    out, pos, i = [], 0, 0
    while pos < len(text):
        size = sizes[i % len(sizes)]
        out += buffer.feed(text[pos : pos + size])
        pos, i = pos + size, i + 1
    return out + buffer.flush()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_fixed_chunk_sizes_match_one_shot(size):
    assert stream(STORY, [size]) == split_sentences(STORY)


def test_sentence_is_held_until_the_next_word():
    buffer = SentenceBuffer()
    assert buffer.feed("Lily ran.") == []  # could still become "..." or "Mr."
    assert buffer.feed(" ") == []
    assert buffer.feed("She") == ["Lily ran."]
    assert buffer.feed(' said "Hi!"') == []
    assert buffer.feed("\n") == ['She said "Hi!"']  # a line break decides at once
    assert buffer.flush() == []


def test_flush_returns_the_tail_and_empties_the_buffer():
    buffer = SentenceBuffer()
    assert buffer.feed("The end. And") == ["The end."]
    assert buffer.flush() == ["And"]
    assert buffer.flush() == []


def test_run_on_sentence_is_cut_at_a_space_below_the_cap():
    text = " ".join(["word"] * 100) + "."
    sentences = split_sentences(text, max_chars=50)
    assert all(len(s) <= 50 for s in sentences)
    assert all(set(s.removesuffix(".").split()) == {"word"} for s in sentences)
    assert " ".join(sentences) == text


def test_word_longer_than_the_cap_is_cut_at_the_cap():
    assert split_sentences("a" * 120, max_chars=50) == ["a" * 50, "a" * 50, "a" * 20]


def test_cap_keeps_combining_marks_with_their_letter():
    text = "x" * 49 + "e\u0301" + "y" * 10
    assert split_sentences(text, max_chars=50) == ["x" * 49, "e\u0301" + "y" * 10]


def test_max_chars_must_be_positive():
    with pytest.raises(ValueError):
        SentenceBuffer(0)


# Fragments that exercise every rule, joined at random into story-like text.
FRAGMENTS = [
    "Once", "upon", "a", "time", "lily", "Tom", "Mr.", "Mrs.", "Dr.", "e.g.", "i.e.",
    "J.", "I.", "3.5", "4.", ".", "..", "...", "\u2026", "!", "?", "?!", ",", ";",
    '"', "'", ")", "(", "\u201c", "\u201d", "\n", "\n\n", " ", "  ", "\t", "\x00",
    "caf\u00e9", "e\u0301", "\u00ab", "ok", "x" * 40,
]
story_text = st.lists(st.sampled_from(FRAGMENTS), max_size=80).map(
    lambda parts: "".join(p if p in {".", "!", "?", ","} else " " + p for p in parts)
)
any_text = st.one_of(story_text, st.text(max_size=300))


def chunk(text, cuts):
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:])]


@settings(max_examples=400, deadline=None)
@given(text=any_text, cuts=st.lists(st.integers(0, 400)), max_chars=st.integers(1, 300))
def test_random_chunking_matches_one_shot(text, cuts, max_chars):
    buffer = SentenceBuffer(max_chars)
    streamed = [s for piece in chunk(text, cuts) for s in buffer.feed(piece)]
    assert streamed + buffer.flush() == split_sentences(text, max_chars)


@settings(max_examples=200, deadline=None)
@given(text=any_text, size=st.sampled_from([1, 2, 3, 5, 7]), max_chars=st.integers(1, 300))
def test_split_once_at_the_end_equals_streaming(text, size, max_chars):
    # Holding everything back and flushing once must not change the sentences.
    held = SentenceBuffer(max_chars)
    assert stream(text, [size], max_chars) == held.feed(text) + held.flush()


@settings(max_examples=300, deadline=None)
@given(text=any_text, max_chars=st.integers(1, 300))
def test_sentences_are_clean_and_lose_nothing(text, max_chars):
    sentences = split_sentences(text, max_chars)
    for s in sentences:
        assert s and s == s.strip() and len(s) <= max_chars
        assert " ".join(s.split()) == s
        assert not any(unicodedata.category(c) == "Cc" for c in s)
    words = ["".join(c for c in w if unicodedata.category(c) != "Cc") for w in text.split()]
    if all(len(w) <= max_chars for w in text.split()):
        # Cuts fall on spaces, so every word survives whole.
        assert " ".join(sentences).split() == [w for w in words if w]
    else:
        assert "".join("".join(sentences).split()) == "".join(words)
