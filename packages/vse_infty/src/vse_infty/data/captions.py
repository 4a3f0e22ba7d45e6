"""Caption tokenisation with the text encoder's HF tokenizer and upstream's training-time word augmentation.

Upstream woodfrog/vse_infty@47fbb71f37:lib/datasets/image_caption.py:process_caption splits a caption into words
(``tokenizer.basic_tokenizer``), each word into word pieces, and in training draws ``p = random()`` per word:

    p < 0.2 * 0.5            -> every piece of the word becomes [MASK]                      (10% of words)
    0.2 * 0.5 <= p < 0.2*0.6 -> every piece becomes a token drawn uniformly from the vocab   (2%)
    0.2 * 0.6 <= p < 0.2     -> the word is deleted                                          (8%)
    otherwise                -> kept
    ids = [CLS] + pieces + [SEP]

(upstream's comment calls the last 40% branch "keep", but its pieces go to ``deleted_idx`` and are removed.) Here
the words are the tokenizer's own pre-tokenised words (``word_ids()``: for BERT the same whitespace + punctuation
split as ``basic_tokenizer``), the special tokens are the tokenizer's own (``[CLS] ... [SEP]`` for BERT), and the
randomness comes from an explicit ``random.Random`` so a seed fixes the augmentation. Upstream never truncates;
here captions are cut to ``max_length`` tokens (special tokens included) before the augmentation.
"""

from __future__ import annotations

import random

from transformers import PreTrainedTokenizerBase

AUG_PROB = 0.2
MASK_SHARE = 0.5
RANDOM_SHARE = 0.1
SANE_MAX_LENGTH = 100_000


class CaptionEncoder:
    """``encoder(caption, rng=None) -> token ids``; with ``rng`` the upstream augmentation is applied."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None,
                 aug_prob: float = AUG_PROB) -> None:
        if max_length is None:
            model_max = getattr(tokenizer, "model_max_length", None)
            max_length = model_max if isinstance(model_max, int) and model_max < SANE_MAX_LENGTH else None
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length={max_length} leaves no room for a token; expected at least 2")
        if not 0.0 <= aug_prob <= 1.0:
            raise ValueError(f"aug_prob={aug_prob} is not a probability; expected a value in [0, 1]")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.aug_prob = aug_prob
        self._vocab_ids: list[int] | None = None

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    @property
    def vocab_ids(self) -> list[int]:
        if self._vocab_ids is None:
            self._vocab_ids = sorted(set(self.tokenizer.get_vocab().values()))
        return self._vocab_ids

    def _tokenize(self, caption: str) -> tuple[list[int], list[int | None]]:
        enc = self.tokenizer(caption, add_special_tokens=True, truncation=self.max_length is not None,
                             max_length=self.max_length)
        ids = list(enc["input_ids"])
        try:
            words = list(enc.word_ids())
        except (AttributeError, ValueError):  # no word alignment: every non-special token is its own word
            specials = set(self.tokenizer.all_special_ids)
            words = [None if t in specials else i for i, t in enumerate(ids)]
        return ids, words

    def __call__(self, caption: str, rng: random.Random | None = None) -> list[int]:
        ids, words = self._tokenize(caption)
        if rng is None or self.aug_prob == 0.0:
            return ids
        mask_id = self.tokenizer.mask_token_id
        if mask_id is None:
            raise ValueError(f"{type(self.tokenizer).__name__} has no mask token; the upstream caption "
                             "augmentation needs one (use aug_prob=0 to train without it)")
        out: list[int] = []
        pos = 0
        while pos < len(ids):
            word = words[pos]
            if word is None:
                out.append(ids[pos])
                pos += 1
                continue
            end = pos
            while end < len(ids) and words[end] == word:
                end += 1
            pieces = ids[pos:end]
            pos = end
            prob = rng.random()
            if prob >= self.aug_prob:
                out.extend(pieces)
                continue
            prob /= self.aug_prob
            if prob < MASK_SHARE:
                out.extend([mask_id] * len(pieces))
            elif prob < MASK_SHARE + RANDOM_SHARE:
                out.extend(rng.choice(self.vocab_ids) for _ in pieces)
            # else: the word is deleted
        return out
