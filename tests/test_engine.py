"""The Python engine: streaming text, independent contexts, stop, reset, scoring, leaks."""
from __future__ import annotations

import threading

import pytest

from modelgen import write_model
from robot.engine import Engine, EngineError, Params

GREEDY = Params(temperature=0.0, seed=1, steps=64)


def test_two_contexts_interleaved(model_path, tokenizer_path, engine):
    """No global state: two engines stepping in turn give what each gives alone."""
    p1, p2 = Params(seed=7, steps=48), Params(seed=8, steps=48, temperature=0.8)
    alone1 = [t.id for t in engine.tokens("The cat", p1)]
    alone2 = [t.id for t in engine.tokens("A dog", p2)]
    with Engine(model_path, tokenizer_path) as other:
        g1, g2 = engine.tokens("The cat", p1), other.tokens("A dog", p2)
        got1, got2 = [], []
        for a, b in zip(g1, g2):
            got1.append(a.id)
            got2.append(b.id)
        got1 += [t.id for t in g1]
        got2 += [t.id for t in g2]
    assert (got1, got2) == (alone1, alone2)


def test_same_seed_same_story(engine):
    p = Params(seed=99, steps=80)
    assert list(engine.generate("Once", p)) == list(engine.generate("Once", p))


def test_text_pieces_are_whole_characters(engine):
    """Byte tokens are joined into characters; the reference CLI drops them instead."""
    prompt = 'Emma said, "Look at the café!" 🙂'
    pieces = list(engine.generate(prompt, Params(seed=11, steps=40)))
    text = "".join(pieces)
    assert text.startswith(prompt)
    assert all(p.encode("utf-8").decode("utf-8") == p for p in pieces)
    tokens = list(engine.tokens(prompt, Params(seed=11, steps=40)))
    assert any(not t.printable for t in tokens)  # the emoji's bytes


def _from_another_thread(fn, *args):
    t = threading.Thread(target=fn, args=args)
    t.start()
    t.join()


def test_stop_before_the_story_starts(engine):
    """The stop names a story numbered before it starts, and is kept for it."""
    story = engine.new_story()
    _from_another_thread(engine.stop, story)
    assert list(engine.tokens("Once upon a time", Params(seed=3), story=story)) == []
    assert engine.stats.finish_reason == "stopped"
    # a story told in several contexts under one number: the next one is stopped too
    assert list(engine.generate("The end", Params(seed=3), story=story)) == []
    # the stop was for that story only
    assert len(list(engine.tokens("Once", Params(seed=3, steps=5)))) == 5


def test_stop_right_after_start(engine):
    gen = engine.tokens("Once upon a time", Params(seed=3, steps=256))  # started here
    _from_another_thread(engine.stop)
    assert list(gen) == []
    assert engine.stats.finish_reason == "stopped"


def test_stop_during_a_story(engine):
    story = engine.new_story()
    gen = engine.tokens("Once upon a time", Params(seed=3, steps=256), story=story)
    first = next(gen)
    _from_another_thread(engine.stop, story)
    rest = list(gen)
    assert first.pos == 1
    assert rest == []
    assert engine.stats.finish_reason == "stopped"


def test_stop_for_an_older_story_spares_the_new_one(engine):
    old = engine.new_story()
    new = engine.new_story()
    engine.stop(old)
    assert len(list(engine.tokens("Once", Params(seed=3, steps=6), story=new))) == 6
    assert engine.stats.finish_reason == "length"
    with pytest.raises(ValueError, match="new_story"):
        engine.tokens("Once", story=new + 10)


def test_score_while_a_story_runs_in_another_thread(engine):
    """The lock covers each token as well as score(): a score between two tokens is the
    score alone, and the story it interrupted refuses to go on."""
    ids = engine.tokenize("Once upon a time there was a dragon")
    want = engine.score(ids)
    started, outcome = threading.Event(), []

    def tell():
        try:
            for i, _ in enumerate(engine.tokens("Lily", Params(seed=4, steps=256))):
                if i == 2:
                    started.set()
            outcome.append("finished")
        except EngineError as err:
            outcome.append(str(err))
        finally:
            started.set()

    worker = threading.Thread(target=tell)
    worker.start()
    started.wait()
    got = [engine.score(ids) for _ in range(5)]
    worker.join()
    assert got == [want] * 5
    assert outcome in (["finished"], ["another story started on this engine"])


def test_new_story_invalidates_old_generator(engine):
    old = engine.tokens("Once", GREEDY)
    next(old)
    list(engine.tokens("Twice", GREEDY))
    with pytest.raises(EngineError, match="another story"):
        next(old)


def test_finish_reasons(engine):
    list(engine.tokens("Once", Params(temperature=0.0, seed=1, steps=10)))
    assert engine.stats.finish_reason == "length"
    list(engine.tokens("Once upon a time", Params(temperature=0.0, seed=1, steps=0)))
    assert engine.stats.finish_reason == "end"
    assert engine.stats.tokens_per_second > 0


def test_score_matches_generation(engine):
    """Greedy tokens are the argmax: each scores at least as high as any other token in
    its place, the likeliest rivals included (what sampling picks there)."""
    ids = [1] + [t.id for t in engine.tokens("Once", GREEDY)]
    logprobs = engine.score(ids)
    assert len(logprobs) == len(ids) - 1
    assert all(lp <= 0 for lp in logprobs)
    pieces = [t.piece for t in engine.tokens("Once", GREEDY)]
    for i in (3, 10, 30):
        prefix = b"".join(pieces[:i]).decode()  # the greedy text so far, as a prompt
        assert engine.tokenize(prefix) == ids[:i + 1]
        rivals = set(range(0, 32000, 997))
        for seed in range(1, 9):  # tokens sampled in this place: the close rivals
            rivals.add([t.id for t in engine.tokens(prefix, Params(seed=seed, steps=i + 2))][-1])
        rivals.discard(ids[i + 1])
        assert len(rivals) > 30
        for other in rivals:
            assert engine.score(ids[:i + 1] + [other])[-1] <= logprobs[i]


def test_generic_kernels_agree(model_path, tokenizer_path, engine):
    with Engine(model_path, tokenizer_path, Params(kernels="generic")) as generic:
        p = Params(seed=5, steps=40, topp=1.0, kernels="generic")
        want = [t.id for t in generic.tokens("Sara liked", p)]
    got = [t.id for t in engine.tokens("Sara liked", Params(seed=5, steps=40, topp=1.0))]
    assert got == want


def test_closed_engine(model_path, tokenizer_path):
    e = Engine(model_path, tokenizer_path)
    e.close()
    e.close()
    with pytest.raises(EngineError, match="closed"):
        e.tokens("x")


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_no_leak_over_1000_contexts(tmp_path, tokenizer_path):
    """Create, generate with and free a context 1000 times: RSS stays flat."""
    small = write_model(tmp_path / "small.bin")
    def cycle():
        with Engine(small, tokenizer_path, Params(seed=3, steps=16)) as e:
            list(e.generate("Once upon"))
    for _ in range(100):
        cycle()
    before = _rss_kb()
    for _ in range(900):
        cycle()
    grown = _rss_kb() - before
    assert grown < 2048, f"RSS grew by {grown} kB over 900 contexts"


def test_threads_agree(model_path, tokenizer_path, engine):
    """Threads split rows, never a row's sum: the story is the same."""
    p = Params(seed=5, steps=60, topp=1.0)
    want = [t.id for t in engine.tokens("Sara liked", p)]
    with Engine(model_path, tokenizer_path, Params(n_threads=2)) as threaded:
        got = [t.id for t in threaded.tokens("Sara liked", Params(seed=5, steps=60, topp=1.0,
                                                                   n_threads=2))]
    assert got == want
