"""The grammar every reshaped opening must follow, written apart from robot/prompts.py.

Built from the story vocabulary file alone (and its own plural rule), so a shaping bug
cannot also bend the check. Agreement is checked too: "a"/"an" by the next word's
first letter (either before a "u"), "was" for one first character and "were" for a group.
"""

import re
from functools import cache

from robot.prompts import VOCABULARY

PREPOSITIONS = "in on at under near inside beside".split()
COUNTS = "two three four five six seven eight nine ten eleven twelve many some".split()
IRREGULAR = {"mouse": "mice", "goose": "geese", "child": "children", "person": "people",
             "man": "men", "woman": "women", "tooth": "teeth", "foot": "feet", "wolf": "wolves",
             "elf": "elves", "leaf": "leaves", "fish": "fish", "sheep": "sheep", "deer": "deer"}


def _plural(noun: str) -> str:
    if noun in IRREGULAR:
        return IRREGULAR[noun]
    if re.search(r"(s|x|z|ch|sh)$", noun):
        return noun + "es"
    if re.search(r"[^aeiou]y$", noun):
        return noun[:-1] + "ies"
    return noun + "s"


@cache
def vocabulary() -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for line in VOCABULARY.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            kind, word = line.split()[:2]
            kinds.setdefault(kind, []).append(word)
    return kinds


def _any(words) -> str:
    return "(?:" + "|".join(sorted(set(words), key=len, reverse=True)) + ")"


@cache
def opening_form() -> re.Pattern:
    v = vocabulary()
    adjective, subject = _any(v["adjective"]), _any(v["subject"])
    subjects = _any(_plural(s) for s in v["subject"])
    name = _any(w.title() for w in v["girl"] + v["boy"] + v["pet"])
    one = rf"(?:an? (?:{adjective} ){{0,2}}{subject}(?: named {name})?)"
    group = rf"(?:{_any(COUNTS)} (?:{adjective} ){{0,2}}{subjects})"
    character = rf"(?:{one}|{group})"
    place = rf"(?:{_any(PREPOSITIONS)} (?:the|an?) (?:{adjective} )?{_any(v['place'])})"
    return re.compile(rf"Once upon a time, there (?P<verb>was|were) (?P<first>{character})"
                      rf"(?:(?:, {character})* and {character})?(?: who lived {place})?\.")


def grammatical(opening: str) -> bool:
    match = opening_form().fullmatch(opening)
    if not match:
        return False
    group = not match["first"].startswith(("a ", "an "))
    if match["verb"] != ("were" if group else "was"):
        return False
    for article, word in re.findall(r"\b(an?) (\w+)", opening):
        # "a unicorn" but "an umbrella": either before a "u".
        if word[0] != "u" and (article == "an") != (word[0] in "aeio"):
            return False
    return True
