"""Rule negatives: structure, words kept, numpy's draws, determinism (the LLM backend: test_llm_negatives.py)."""

from collections import Counter

import numpy as np
import pytest

from clapcomp.data import negatives as N

CONNECTIVE_WORDS = {"followed", "preceded", "by", "and", "then", "before", "after", "which", "while"}


def words(s):
    return [w.strip(".,!?").lower() for w in s.split()]


CAPTIONS = [
    "A dog barks, followed by a man speaking.",
    "a loud dog and a quiet man",
    "A car passes before a horn honks",
    "a whistle followed by a buzz and then a hiss",
    "People talk while a dog barks",
    "a short beep and a long whistle",
    "Rain falls on a roof",
    "a high-pitched siren and a low-pitched engine",
    "an old man speaks after a young woman laughs",
    "silence",
    "",
]


def test_negatives_are_distinct_bounded_and_never_the_caption():
    gen = N.NegativeGenerator(seed=0)
    for cap in CAPTIONS:
        for k in (1, 3, 8):
            negs = gen.generate(cap, k)
            assert len(negs) <= k
            assert len({N.normalize(n) for n in negs}) == len(negs)
            assert all(N.normalize(n) != N.normalize(cap) for n in negs)
    assert gen.generate("a loud dog and a quiet man", 1) == ["a quiet dog and a loud man"]  # priority


def test_order_swaps_hand_checked():
    assert N.order_swaps("A dog barks, followed by a man speaking.") == [
        "A man speaking, followed by a dog barks.", "A dog barks, preceded by a man speaking."]  # fmt: skip
    assert set(N.order_swaps("a hiss preceded by a chord")) == {
        "a chord preceded by a hiss",
        "a hiss followed by a chord",
    }
    assert set(N.order_swaps("A car passes before a horn honks")) == {
        "A horn honks before a car passes", "A car passes after a horn honks"}  # fmt: skip
    assert set(N.order_swaps("an old man speaks after a young woman laughs")) == {
        "a young woman laughs after an old man speaks", "an old man speaks before a young woman laughs"}  # fmt: skip
    assert set(N.order_swaps("People talk while a dog barks")) == {
        "People talk before a dog barks", "A dog barks before people talk"}  # fmt: skip
    assert set(N.order_swaps("a whistle followed by a buzz and then a hiss")) == {
        "a buzz followed by a whistle and then a hiss", "a whistle preceded by a buzz and then a hiss",
        "a whistle followed by a hiss and then a buzz", "a hiss followed by a buzz and then a whistle"}  # fmt: skip


def test_order_swaps_keep_the_same_events():
    for cap in CAPTIONS:
        for neg in N.order_swaps(cap):
            events = Counter(w for w in words(cap) if w not in CONNECTIVE_WORDS)
            assert Counter(w for w in words(neg) if w not in CONNECTIVE_WORDS) == events
            assert words(neg) != words(cap)


def test_attribute_swaps_keep_the_same_words_in_another_order():
    assert N.attribute_swaps("a loud dog and a quiet man") == ["a quiet dog and a loud man"]
    assert N.attribute_swaps("An old dog and a young owl.") == ["A young dog and an old owl."]  # a/an fixed
    found = 0
    for cap in CAPTIONS:
        for neg in N.attribute_swaps(cap):
            found += 1
            assert Counter(words(neg)) == Counter(words(cap)) and words(neg) != words(cap)
    assert found == 4  # loud/quiet, short/long, high-/low-pitched, old/young


def test_rules_do_not_fire_without_their_structure():
    assert N.order_swaps("a dog barks loudly") == []
    assert N.order_swaps("a bird sings before dawn") == []  # one-word segment: not two events
    assert N.order_swaps("then a dog barks") == []
    assert N.attribute_swaps("a loud dog barks") == []
    assert N.attribute_swaps("a loud dog and a long whistle") == []  # different kinds
    assert N.attribute_swaps("a loud dog and a loud man") == []  # same value
    assert N.attribute_flips("a dog barks") == []
    assert N.event_substitutions("a violin plays", ["dog", "cat"], np.random.default_rng(0)) == []
    assert N.NegativeGenerator(0, vocabulary=[]).generate("a violin plays", 5) == []


def test_attribute_flip_and_event_substitution():
    assert set(N.attribute_flips("a loud dog and a quiet man")) == {
        "a quiet dog and a quiet man",
        "a loud dog and a loud man",
    }
    vocab = ["rising chirp", "chirp", "buzz", "hiss"]
    subs = N.event_substitutions("a rising chirp followed by a buzz", vocab, np.random.default_rng(0))
    # longest match wins; "chirp" is already present inside "rising chirp", so only "hiss" is new
    assert set(subs) == {"a hiss followed by a buzz", "a rising chirp followed by a hiss"}
    assert N.event_substitutions("a dog and an owl", ["owl", "dog"], np.random.default_rng(0)) == []  # none new
    assert N.event_substitutions("a dog and an owl", ["owl", "eagle"], np.random.default_rng(0)) == [
        "a dog and an eagle"
    ]
    assert N.event_substitutions("a dog barks", ["dog", "eagle"], np.random.default_rng(0)) == ["an eagle barks"]


def _substitutions_by_the_rule(caption, vocabulary, rng, per_event=2):
    """The substitution rule written plainly: one whole-word search per phrase for the pool (phrases absent from the
    caption), the longest-match alternation for the events, the caption's case and articles restored."""
    import re

    c = N._Caption(caption)
    phrases = sorted({v.strip().lower() for v in vocabulary if v.strip()}, key=lambda v: (-len(v), v))
    pool = [p for p in phrases if not re.search(r"\b" + re.escape(p) + r"\b", c.body, re.I)]
    out = []
    for m in re.finditer(r"\b(" + "|".join(map(re.escape, phrases)) + r")\b", c.body, re.I):
        for r in rng.choice(len(pool), size=min(per_event, len(pool)), replace=False) if pool else []:
            out.append(c.finish(c.body[: m.start()] + pool[int(r)] + c.body[m.end() :]))
    return N._distinct(caption, out)


@pytest.mark.parametrize(
    "vocabulary",
    [N.DEFAULT_VOCABULARY, ("Dog", "owl", "car_horn", "x2"), ("car horn", "horn", "dog"), ("café", "dog", "ſiren")],
)
def test_event_substitutions_equal_the_rule_written_plainly(vocabulary):
    """One-word ASCII vocabularies on ASCII captions take a word-set shortcut for the pool; others the searches."""
    captions = [
        *CAPTIONS,
        "a Dog-like owl then a DOG",
        "a car_horn and x2 dogs",
        "the car horn, a horn",
        "a café siren",
    ]
    captions += ["a ſiren before a dog", "an owl\u00a0and a car", "a dog's bark then a cat's meow"]
    for i, caption in enumerate(captions):
        got = N.event_substitutions(caption, vocabulary, np.random.default_rng(i))
        assert got == _substitutions_by_the_rule(caption, vocabulary, np.random.default_rng(i)), caption


def test_draws_are_numpys_choice_and_permutation():
    """`_Draws` computes numpy's own choice (Floyd's sample, then a Lemire shuffle) and permutation (a
    masked-rejection shuffle) from the raw outputs: the same numbers, call after call, as the Generator."""
    plan = np.random.default_rng(123)
    for seed in range(1500):
        numpy_rng = np.random.default_rng([seed, 77])
        draws = N._Draws(np.random.default_rng([seed, 77]))
        for _ in range(int(plan.integers(1, 8))):
            n = int(plan.integers(0, 70))
            if plan.random() < 0.5:
                k = int(plan.integers(0, n + 1))
                assert draws.choice(n, size=k, replace=False) == numpy_rng.choice(n, size=k, replace=False).tolist()
            else:
                assert draws.permutation(n) == numpy_rng.permutation(n).tolist()
    big = np.random.default_rng(5)
    assert N._Draws(np.random.default_rng(5)).choice(50_000, size=2) == big.choice(50_000, 2, replace=False).tolist()
    with pytest.raises(ValueError, match="Floyd"):
        N._Draws(np.random.default_rng(5)).choice(50_000, size=5_000)


def test_deterministic_per_seed_and_independent_of_call_order():
    a, b = N.NegativeGenerator(seed=5), N.NegativeGenerator(seed=5)
    forward = [a.generate(c, 4) for c in CAPTIONS]
    backward = [b.generate(c, 4) for c in reversed(CAPTIONS)][::-1]
    assert forward == backward
    others = [N.NegativeGenerator(seed=s).generate("a dog barks followed by a cat meows", 4) for s in range(6)]
    assert len({tuple(o) for o in others}) > 1  # substitutions depend on the seed
