"""Caption tokenisation and upstream's BERT word augmentation (mask 10% / random 2% / delete 8% of words)."""

from __future__ import annotations

import random

import pytest
from data_fixtures import word_tokenizer
from vse_infty.data import CaptionEncoder

CAPTION = "a red circles above, a blue square"


class ScriptedRandom(random.Random):
    """``random()`` returns the scripted values; ``choice`` the last element."""

    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)

    def choice(self, seq):  # type: ignore[override]
        return seq[-1]


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def ids_of(tok, *tokens: str) -> list[int]:
    return tok.convert_tokens_to_ids(list(tokens))


def test_eval_encoding_is_the_tokenizer_output(tok) -> None:
    enc = CaptionEncoder(tok)
    assert enc(CAPTION) == tok(CAPTION)["input_ids"]
    assert tok.convert_ids_to_tokens(enc(CAPTION)) == ["[CLS]", "a", "red", "circle", "##s", "above", ",", "a",
                                                       "blue", "square", "[SEP]"]


def test_augmentation_branches_per_word_as_upstream(tok) -> None:
    # words: a red circles above , a blue square  (8 words, "circles" = circle ##s)
    # p < 0.1 mask, 0.1 <= p < 0.12 random token, 0.12 <= p < 0.2 delete, p >= 0.2 keep
    script = [0.5, 0.05, 0.11, 0.15, 0.3, 0.9, 0.199, 0.0]
    out = CaptionEncoder(tok)(CAPTION, ScriptedRandom(script))
    last = max(tok.get_vocab().values())
    expected = [*ids_of(tok, "[CLS]", "a", "[MASK]"), last, last, *ids_of(tok, ",", "a", "[MASK]", "[SEP]")]
    assert out == expected  # "circles": both pieces random; "above" and "blue" deleted; "square" masked


def test_augmentation_is_seeded_and_has_upstream_rates(tok) -> None:
    enc = CaptionEncoder(tok)
    caption = " ".join(["red"] * 4000)
    assert enc(caption, random.Random(3)) == enc(caption, random.Random(3))
    assert enc(caption, random.Random(3)) != enc(caption, random.Random(4))
    out = enc(caption, random.Random(0))[1:-1]
    red, mask = ids_of(tok, "red", "[MASK]")
    masked, kept = out.count(mask), out.count(red)
    randomised = len(out) - masked - kept
    deleted = 4000 - len(out)
    assert abs(masked / 4000 - 0.10) < 0.02 and abs(deleted / 4000 - 0.08) < 0.02
    assert 0 < randomised < 0.05 * 4000 and abs(kept / 4000 - 0.80) < 0.03


def test_max_length_truncates_before_augmenting(tok) -> None:
    enc = CaptionEncoder(tok, max_length=5)
    out = enc("a red circle above a blue square")
    assert tok.convert_ids_to_tokens(out) == ["[CLS]", "a", "red", "circle", "[SEP]"]
    assert len(enc("a red circle above a blue square", random.Random(1))) <= 5
    with pytest.raises(ValueError, match="max_length=1"):
        CaptionEncoder(tok, max_length=1)


def test_augmentation_without_mask_token_is_an_error(tok) -> None:
    no_mask = word_tokenizer()
    no_mask.mask_token = None
    with pytest.raises(ValueError, match="no mask token"):
        CaptionEncoder(no_mask)("a red circle", random.Random(0))
    assert CaptionEncoder(no_mask, aug_prob=0.0)("a red circle", random.Random(0)) == no_mask("a red circle")[
        "input_ids"]
