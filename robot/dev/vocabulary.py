"""storybot-vocabulary: what stories15M tells about, from its own samples and its tokenizer.

Writes two files into robot/data/, both derived here and never edited by hand:

* ``story_vocabulary.txt``: the words an opening may be shaped from (robot/prompts.py).
  The model tells STORIES seeded stories and continues "Once upon a time, there was a"
  SAMPLES times by a few tokens; every word in them the English recognizer can say (it
  is in its dictionary) and the word filter lets through is a candidate,
  and the model itself says which candidates are what, by the log-probability
  (``Engine.score``, over all the word's tokenizer pieces) it gives them in an opening:

  - subject: "Once upon a time, there was a WORD who" scores at least SUBJECT_LOGPROB
    (characters score high; "forest", "big" or "teach" do not), and higher than
    "... there were many WORD who" (which a plural such as "children" prefers), and
    the stories say "a WORD" if they say "his/her/their WORD" (what only ever belongs
    to someone, "body", "mom", is no story's subject);
  - place: it followed "in the" or "in a" in the stories at least MIN_COUNT times and
    "... a bird (a girl) who lived in the WORD." scores at least PLACE_LOGPROB;
  - adjective: it stood between "a", "an" or "the" and a subject at least twice;
  - girl, boy, pet: a capitalized word inside sentences at least MIN_COUNT times that
    "... a little girl named WORD." (boy, dog) scores at least NAME_LOGPROB, under the
    kind that scores it highest.

  Each line keeps the numbers: times said, tokenizer pieces, log-probability.
* ``story.lm``: an ARPA trigram language model for pocketsphinx (robot/listen.py),
  trained on the same stories plus requests made of the vocabulary, so the recognizer
  expects what a child asks this robot for and what its stories say.

Sampling is seeded, so a rerun on the same model gives the same files (minutes):

    python -m robot.dev.vocabulary --model ../shared/models/stories15M.bin
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

from ..engine import Engine, Params
from ..wordfilter import WordFilter

DATA = Path(__file__).resolve().parent.parent / "data"
MIN_COUNT = 3
SUBJECT_LOGPROB = -15.0
PLACE_LOGPROB = -10.0
NAME_LOGPROB = -10.0
ORDER = 3
DISCOUNT = 0.7

OPENING = "Once upon a time, there was a"
NAME_CONTEXTS = {"girl": "Once upon a time, there was a little girl named",
                 "boy": "Once upon a time, there was a little boy named",
                 "pet": "Once upon a time, there was a dog named"}
PLURAL_OPENING = "Once upon a time, there were many"
PLACE_CONTEXTS = ("Once upon a time, there was a bird who lived in the",
                  "Once upon a time, there was a girl who lived in the")
_DETERMINERS = frozenset("a an the".split())

# The ways a child asks, around a subject ({np}); the words come from the vocabulary.
REQUEST_FRAMES = (
    "tell me a story about {np}",
    "can you tell me a story about {np}",
    "please tell me a story about {np}",
    "i want a story about {np}",
    "a story about {np}",
    "story about {np}",
    "{np}",
    "once upon a time there was {np}",
    "tell me a story about {np} and {np}",
    "tell me a story about {np} who lived {place}",
    "a story about {np} named {name}",
    "tell me a story",
    "tell me a story please",
)


def dictionary_words(path: Path) -> set[str]:
    words = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        words.add(line.split(" ", 1)[0].split("(", 1)[0])
    return words


def tell_stories(engine: Engine, count: int, seed: int) -> list[str]:
    return ["".join(engine.generate("Once upon a time,", Params(seed=seed + k, steps=256)))
            for k in range(count)]


def first_words(engine: Engine, count: int, seed: int) -> list[str]:
    """The words the model puts right after OPENING, count seeded times."""
    steps = len(engine.tokenize(OPENING)) + 4
    out = []
    for k in range(count):
        text = "".join(engine.generate(OPENING, Params(seed=seed + k, steps=steps)))
        out += re.findall(r"[a-z]+", text[len(OPENING):])[:1]
    return out


def sentences_of(stories: list[str]) -> list[list[str]]:
    """Each story's sentences as words, case kept."""
    out = []
    for story in stories:
        for sentence in re.split(r"[.!?]+", story):
            words = re.findall(r"[A-Za-z']+", sentence)
            if words:
                out.append(words)
    return out


def logprob(engine: Engine, context: str, rest: str) -> float:
    """Natural-log probability the model gives rest (all its pieces) after context."""
    before = len(engine.tokenize(context))
    return sum(engine.score(engine.tokenize(f"{context} {rest}"))[before - 1:])


def derive(engine: Engine, sentences: list[list[str]], first: list[str], hearable: set[str],
           blocked: WordFilter) -> dict[str, dict[str, tuple[int, int, float]]]:
    """kind -> word -> (times said, tokenizer pieces, log-probability)."""
    said = Counter(w.lower() for words in sentences for w in words) + Counter(first)
    candidates = sorted(w for w in said if w.isalpha() and w in hearable and blocked.is_clean(w))
    pieces = {w: len(engine.tokenize(w)) - 1 for w in candidates}
    vocab: dict[str, dict[str, tuple[int, int, float]]] = defaultdict(dict)

    capitalized = Counter(w for words in sentences for w in words[1:]
                          if w[:1].isupper() and w[1:].islower() and w.lower() in candidates)
    for name, n in capitalized.items():
        if n >= MIN_COUNT and name not in ("I", "Once"):
            scores = {kind: logprob(engine, c, name + ".") for kind, c in NAME_CONTEXTS.items()}
            kind = max(scores, key=scores.get)
            if scores[kind] >= NAME_LOGPROB:
                vocab[kind][name.lower()] = (n, pieces[name.lower()], scores[kind])
    names = {w for kind in NAME_CONTEXTS for w in vocab[kind]}

    for word in candidates:
        if word in names:
            continue
        score = logprob(engine, OPENING, word + " who")
        if score >= SUBJECT_LOGPROB and score > logprob(engine, PLURAL_OPENING, word + " who"):
            vocab["subject"][word] = (said[word], pieces[word], score)
    subjects = vocab["subject"]
    owned, introduced = Counter(), Counter()
    for words in sentences:
        lower = [w.lower() for w in words]
        for a, b in zip(lower, lower[1:]):
            if a in ("his", "her", "their", "my", "your"):
                owned[b] += 1
            elif a in ("a", "an"):
                introduced[b] += 1
    for word in list(subjects):
        # "dogs" beside "dog": the plural is the same subject
        plural = (any(word == s + end for s in subjects for end in ("s", "es"))
                  or (word.endswith("ies") and word[:-3] + "y" in subjects))
        if plural or (owned[word] and not introduced[word]):
            del subjects[word]

    after_in, before_subject = Counter(), Counter()
    for words in sentences:
        lower = [w.lower() for w in words]
        for a, b, c in zip(lower, lower[1:], lower[2:]):
            if a == "in" and b in ("the", "a"):
                after_in[c] += 1
            if a in _DETERMINERS and c in subjects:
                before_subject[b] += 1
    for word, n in after_in.items():
        if n >= MIN_COUNT and word in candidates and word not in names:
            score = max(logprob(engine, c, word + ".") for c in PLACE_CONTEXTS)
            if score >= PLACE_LOGPROB:
                vocab["place"][word] = (n, pieces[word], score)
    for word, n in before_subject.items():
        if (n >= 2 and word in candidates and word not in _DETERMINERS
                and word not in subjects and word not in vocab["place"] and word not in names):
            vocab["adjective"][word] = (n, pieces[word], logprob(engine, OPENING, word + " dog"))
    return vocab


def request_sentences(vocab: dict[str, dict[str, tuple]]) -> list[list[str]]:
    """Requests a child might make, each subject, place and name at least once."""
    def by_count(kind: str) -> list[str]:
        return sorted(vocab[kind], key=lambda w: (-vocab[kind][w][0], w))

    def a(word: str) -> str:
        return ("an " if word[0] in "aeiou" else "a ") + word

    subjects, adjectives, places = by_count("subject"), by_count("adjective"), by_count("place")
    names = sorted(set(vocab["girl"]) | set(vocab["boy"]) | set(vocab["pet"]))
    out = []
    for k, noun in enumerate(subjects):
        for j, frame in enumerate(REQUEST_FRAMES):
            adjective = adjectives[(k + j) % len(adjectives)]
            described = a(noun) if (k + j) % 2 else a(f"{adjective} {noun}")
            text = (frame.replace("{np}", described, 1)
                    .replace("{np}", a(subjects[(k + 1) % len(subjects)]))
                    .replace("{place}", f"in the {places[(k + j) % len(places)]}")
                    .replace("{name}", names[(k + j) % len(names)]))
            out.append(text.split())
        out.append([noun + "s"])
    out += [["in", "the", place] for place in places] + [[name] for name in names]
    return out


def write_arpa(sentences: list[list[str]], path: Path) -> None:
    """A trigram model with absolute discounting and back-off, in ARPA text."""
    counts: list[Counter] = [Counter() for _ in range(ORDER)]
    for words in sentences:
        padded = ["<s>", *words, "</s>"]
        for n in range(1, ORDER + 1):
            for i in range(len(padded) - n + 1):
                gram = tuple(padded[i:i + n])
                if gram != ("<s>",):
                    counts[n - 1][gram] += 1
    vocab = [g[0] for g in counts[0]] + ["<s>"]
    total = sum(counts[0].values())
    unigram = {(w,): counts[0][(w,)] / total for w in vocab if w != "<s>"}
    unigram[("<s>",)] = 0.0
    probs: list[dict[tuple, float]] = [unigram]
    backoff: list[dict[tuple, float]] = [dict.fromkeys(unigram, 0.0)]
    for n in range(2, ORDER + 1):
        by_context: dict[tuple, list[tuple]] = defaultdict(list)
        for gram in counts[n - 1]:
            by_context[gram[:-1]].append(gram)
        level, weights = {}, {}
        for context, grams in by_context.items():
            context_total = sum(counts[n - 1][g] for g in grams)
            seen_mass, lower_mass = 0.0, 0.0
            for gram in grams:
                p = (counts[n - 1][gram] - DISCOUNT) / context_total
                level[gram] = p
                seen_mass += p
                lower_mass += _lower(probs, backoff, gram[1:])
            left = 1.0 - seen_mass
            weights[context] = left / max(1e-9, 1.0 - lower_mass) if lower_mass < 1.0 else 1.0
        for context, weight in weights.items():
            backoff[n - 2][context] = weight
        probs.append(level)
        backoff.append(dict.fromkeys(level, 0.0))

    def log10(p: float) -> float:
        return -99.0 if p <= 0 else math.log10(p)

    lines = ["\\data\\"] + [f"ngram {n + 1}={len(probs[n])}" for n in range(ORDER)] + [""]
    for n in range(ORDER):
        lines.append(f"\\{n + 1}-grams:")
        for gram in sorted(probs[n]):
            row = f"{log10(probs[n][gram]):.4f}\t{' '.join(gram)}"
            if n < ORDER - 1:
                row += f"\t{log10(backoff[n].get(gram, 1.0)):.4f}"
            lines.append(row)
        lines.append("")
    lines.append("\\end\\")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _lower(probs, backoff, gram: tuple) -> float:
    """The back-off probability of gram from the lower orders."""
    n = len(gram)
    if gram in probs[n - 1]:
        return probs[n - 1][gram]
    weight = backoff[n - 2].get(gram[:-1], 1.0) if n > 1 else 1.0
    return weight * _lower(probs, backoff, gram[1:]) if n > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default="../shared/models/stories15M.bin")
    parser.add_argument("--tokenizer", default="../shared/models/tokenizer.bin")
    parser.add_argument("--stories", type=int, default=300, help="stories to tell")
    parser.add_argument("--samples", type=int, default=2000,
                        help="continuations of the opening, for rarer subjects")
    parser.add_argument("--out", default=str(DATA))
    parser.add_argument("--cache", type=Path,
                        help="JSON file of the told stories: read if it exists, else written")
    args = parser.parse_args(argv)

    import pocketsphinx  # the recognizer's dictionary says which words it can hear

    english = Path(pocketsphinx.get_model_path()) / "en-us"
    hearable = dictionary_words(english / "cmudict-en-us.dict")
    with Engine(args.model, args.tokenizer) as engine:
        if args.cache and args.cache.is_file():
            stories = json.loads(args.cache.read_text(encoding="utf-8"))
        else:
            stories = tell_stories(engine, args.stories, seed=100_000)
            if args.cache:
                args.cache.write_text(json.dumps(stories), encoding="utf-8")
        sentences = sentences_of(stories)
        first = first_words(engine, args.samples, seed=1)
        vocab = derive(engine, sentences, first, hearable, WordFilter.default())
    empty = [kind for kind in ("subject", "adjective", "place", "girl", "boy", "pet")
             if not vocab[kind]]
    if empty:
        parser.error(f"no {', '.join(empty)} in {args.stories} stories: tell more")
    out = Path(args.out)
    with open(out / "story_vocabulary.txt", "w", encoding="utf-8") as f:
        f.write("# Derived by robot/dev/vocabulary.py from stories15M's own stories and its\n"
                "# tokenizer; do not edit. Columns: kind, word, times said, tokenizer pieces,\n"
                "# log-probability in an opening (see the tool).\n")
        for kind in ("subject", "adjective", "place", "girl", "boy", "pet"):
            for word, (n, k, score) in sorted(vocab[kind].items()):
                f.write(f"{kind} {word} {n} {k} {score:.2f}\n")
    lowered = [[w.lower() for w in words] for words in sentences]
    write_arpa(lowered + request_sentences(vocab), out / "story.lm")
    print({kind: len(words) for kind, words in vocab.items()}, f"{len(sentences)} story sentences")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
