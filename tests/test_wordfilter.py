"""Tests for robot.wordfilter: whole-word blocking of words unfit for a child."""

import logging

import pytest

from robot.prompts import shape_prompt
from robot.wordfilter import DEFAULT_LIST, WordFilter


@pytest.fixture(scope="module")
def words():
    return WordFilter.default()


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("the knight wanted to kill the dragon", ["kill"]),
        ("KILL the Gun", ["KILL", "Gun"]),
        ("he killed it, killing it: a killer", ["killed", "killing", "killer"]),
        ("guns and the gun's handle", ["guns", "gun's"]),
        ("gun\u2019s", ["gun\u2019s"]),
        ("she stabbed him", ["stabbed"]),
        ("you bitches", ["bitches"]),
        ('"Damn!" said Tom.', ["Damn"]),
        ("what the hell.", ["hell"]),
        ("(shit)", ["shit"]),
        ("a gun-shy dog", ["gun"]),
        ("a blow job", ["blow job"]),
        ("two blow jobs", ["blow jobs"]),
        ("kill kill", ["kill", "kill"]),
    ],
)
def test_blocked_finds_whole_words_and_simple_forms(words, text, found):
    assert words.blocked(text) == found
    assert not words.is_clean(text)


@pytest.mark.parametrize(
    "text",
    [
        "The class went to the grass by the glass house.",  # ass
        "Scunthorpe is a town.",
        "The assassin was a cocktail of passion.",
        "Hello! The shell is on the shelf.",  # hell
        "Add the spices to the grapes.",  # spic, rape
        "The therapist read a document.",  # rapist
        "A heroine with great skill.",  # heroin, kill
        "Shitake mushrooms in Essex.",
        "The bloodhound sniffed.",
        "Blow out the candles and do your job.",  # words of a phrase apart
        "The flower died and Lily was sad. The old dog was dead.",  # deliberately allowed
        "Tom shot the ball at the net; a shooting star fell.",
        "The rooster said cock-a-doodle-doo to the pussy cat.",
        "",
    ],
)
def test_no_false_positives(words, text):
    assert words.blocked(text) == []
    assert words.is_clean(text)


def test_custom_list_with_comments(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text(
        "# a family's own list\n"
        "\n"
        "Broccoli   # case does not matter\n"
        "  bed time  \n"
        "#monster is commented out\n",
        encoding="utf-8",
    )
    custom = WordFilter.from_file(path)
    assert custom.entries == ("bed time", "broccoli")
    assert custom.blocked("No broccoli before bed time, said Mom.") == ["broccoli", "bed time"]
    assert custom.is_clean("The monster ate a bed.")
    assert custom.is_clean("kill")  # only the custom list applies


def test_entries_are_normalized_and_empty_ones_skipped():
    custom = WordFilter(["  Gun ", "", "...", "Blow  JOB"])
    assert custom.entries == ("blow job", "gun")


def test_default_list_loads_and_keeps_the_documented_choices(words):
    assert DEFAULT_LIST.name == "blocked_words.txt"
    assert {"kill", "gun", "blood", "fuck"} <= set(words.entries)
    assert not {"die", "died", "dead", "hurt", "stupid", "sword"} & set(words.entries)


def test_clean_transcript(words):
    heard = "tell me a story about a fucking dragon"
    assert words.clean_transcript(heard) == "tell me a story about a dragon"
    assert words.clean_transcript("a  damn gun and a cat") == "a and a cat"
    assert words.clean_transcript("  a story   about a cat ") == "a story about a cat"
    assert words.clean_transcript("shit") == ""


def test_cleaned_transcript_makes_a_clean_opening(words):
    heard = "tell me a story about a bloody dragon named max who likes damn cake"
    opening = shape_prompt(words.clean_transcript(heard)).opening
    assert opening == "Once upon a time, there was a dragon named Max."
    assert words.is_clean(opening)
    assert shape_prompt(words.clean_transcript("kill kill")).source == "surprise"


def test_cleaning_logs_a_count_not_the_words(words, caplog):
    with caplog.at_level(logging.INFO, logger="robot.wordfilter"):
        words.clean_transcript("a damn cat")
    assert "removed 1 blocked word" in caplog.text
    assert "damn" not in caplog.text
