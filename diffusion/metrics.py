"""Evaluation metrics, matching DiffuSeq's scripts/eval_seq2seq.py (Feb 2023 version).

Text is compared as DiffuSeq does: whitespace-split tokens of the decoded strings, no extra
normalisation, so numbers are on the same scale as the DiffuSeq paper.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import Counter

import numpy as np

# which model BERTScore loads lives in a module without numpy, for the pipeline's login node
from .bertscore_model import (DEFAULT_BERTSCORE_MODEL, OFFLINE_PACKAGE_MODEL,  # noqa: F401
                              default_offline_bertscore_model, resolve_bertscore_model)

# nltk's SmoothingFunction().k, which its method4 smoothing divides by; MBR's own BLEU uses it
# without importing nltk (seconds of a sampling process's start: nltk imports scipy.stats and
# more), and tests/diffusion/test_metrics.py checks that BLEU against nltk's
_METHOD4_K = 5

# DiffuSeq's evaluator strips these BERT special tokens from every string before scoring.
_SPECIAL = ("[CLS]", "[SEP]", "[PAD]")


def clean(text: str) -> str:
    for tok in _SPECIAL:
        text = text.replace(tok, "")
    return text.strip()


@functools.cache
def _nltk_bleu():
    """nltk's sentence_bleu and DiffuSeq's smoothing (method4 at nltk's defaults), imported on first
    use: evaluation needs them, sampling's MBR does not."""
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu

    return nltk_sentence_bleu, SmoothingFunction().method4


def sentence_bleu(hyp: str, ref: str) -> float:
    # Default 4-gram weights; method4 smoothing so short sentences don't collapse to 0.
    # (DiffuSeq's pre-Feb-2023 script had hyp and ref swapped; the fixed order is used here.)
    nltk_sentence_bleu, method4 = _nltk_bleu()
    return float(nltk_sentence_bleu([ref.split()], hyp.split(), smoothing_function=method4))


def bleu(hyps, refs) -> float:
    # Mean of sentence-level BLEU (0-1), not corpus BLEU: that is what DiffuSeq reports.
    return float(np.mean([sentence_bleu(h, r) for h, r in zip(hyps, refs, strict=True)]))


def _rouge_scorer():
    # imported here: sampling (MBR) needs neither, and GPU images often lack rouge_score
    from rouge_score import rouge_scorer

    # DiffuSeq used torchmetrics' ROUGEScore(), whose default is use_stemmer=False; rouge_score
    # tokenises the same way (lowercase, non [a-z0-9] -> space), so no stemming here either.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(hyps, refs) -> float:
    # rouge_score's signature is score(target, prediction).
    scorer = _rouge_scorer()
    return float(np.mean([scorer.score(r, h)["rougeL"].fmeasure
                          for h, r in zip(hyps, refs, strict=True)]))


def dist1(hyps) -> float:
    # Per-sentence distinct unigram ratio; an empty sentence scores 0 (as DiffuSeq's
    # distinct_n_gram([hyp], 1) returns 0 for it).
    vals = []
    for h in hyps:
        toks = h.split()
        vals.append(len(set(toks)) / len(toks) if toks else 0.0)
    return float(np.mean(vals))


def mean_len(hyps) -> float:
    # split(' ') not split(): kept exactly as DiffuSeq (an empty string counts as length 1).
    return float(np.mean([len(h.split(" ")) for h in hyps]))


def empty_share(hyps) -> float:
    # Outputs with no token at all: the all-PAD collapse of an undertrained model (DiffuSeq #50).
    return float(np.mean([not h.strip() for h in hyps]))


def corpus_sacrebleu(hyps, refs) -> float:
    # Standard corpus BLEU (0-100), for comparison with non-DiffuSeq papers.
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


def bertscore_model_unavailable(model: str) -> str | None:
    """Why `model` cannot be loaded here without waiting on the network, or None if it can (a
    local folder, a copy in the hub cache, or a hub that may be reachable). With HF_HUB_OFFLINE
    set, a model missing from the cache fails at once instead of after minutes of retries."""
    if os.path.isdir(model):
        return None
    if os.path.exists(model):
        return "is a file, not a model folder"
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return None
    except HFValidationError:  # not a hub name ("org/model"): a path that is not there
        return "is neither a folder here nor a hub model name"
    if constants.HF_HUB_OFFLINE:
        return "is neither a local folder nor in the hub cache, and the hub is off (HF_HUB_OFFLINE)"
    if not _reachable(constants.ENDPOINT):
        return f"is neither a local folder nor in the hub cache, and the hub ({constants.ENDPOINT}) cannot be reached"
    return None


def _reachable(url: str, timeout: float = 2.0) -> bool:
    """One TCP connection to the hub's host: an offline machine answers in a moment, where the
    hub client would retry for about a minute."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def bertscore(hyps, refs, model: str = DEFAULT_BERTSCORE_MODEL,
              batch_size: int = 64, device: str | None = None) -> float:
    """Mean BERTScore F1, no baseline rescaling (as DiffuSeq).

    `model` is a hub name known to bert-score, or a local HF model folder. bert-score has no
    default layer for unknown model types, so for a folder we use all its layers
    (num_hidden_layers from config.json).
    """
    from bert_score import score as _bert_score  # heavy import, only when needed

    hyps, refs = list(hyps), list(refs)
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hyps but {len(refs)} refs")
    kwargs = {}
    if os.path.isdir(model):
        with open(os.path.join(model, "config.json")) as f:
            kwargs["num_layers"] = json.load(f)["num_hidden_layers"]
    # bert-score 0.3.12 (checked) crashes on empty strings under transformers 5 (it calls the removed
    # tokenizer.build_inputs_with_special_tokens). With older transformers it scores such a
    # pair F1 = 0, so we do that ourselves and only send non-empty pairs to it.
    keep = [i for i, (h, r) in enumerate(zip(hyps, refs)) if h.strip() and r.strip()]
    f1 = np.zeros(len(hyps))
    if keep:
        _, _, f = _bert_score([hyps[i] for i in keep], [refs[i] for i in keep], model_type=model,
                              lang="en", batch_size=batch_size, device=device, verbose=False,
                              **kwargs)
        f1[keep] = f.double().cpu().numpy()
    return float(f1.mean())


def score(hyps, refs, srcs=None, bertscore_model: str | None = DEFAULT_BERTSCORE_MODEL,
          bertscore_batch_size: int = 64) -> dict:
    hyps = [clean(h) for h in hyps]
    refs = [clean(r) for r in refs]
    out = {
        "bleu": bleu(hyps, refs),
        "rouge_l": rouge_l(hyps, refs),
        "bertscore": bertscore(hyps, refs, bertscore_model, bertscore_batch_size) if bertscore_model else None,
        "dist1": dist1(hyps),
        "len": mean_len(hyps),
        "empty": empty_share(hyps),
        "sacrebleu": corpus_sacrebleu(hyps, refs),
    }
    if srcs is not None:
        # How much the output merely copies its source (high = little rewriting).
        out["self_bleu_src"] = bleu(hyps, [clean(s) for s in srcs])
    return out


class _Ngrams:
    """A sentence's whitespace tokens' 1- to 4-gram counts, counted once for all its pairings."""

    __slots__ = ("length", "counts")

    def __init__(self, text: str):
        tokens = text.split()
        self.length = len(tokens)
        self.counts = [Counter(zip(*(tokens[k:] for k in range(n)))) for n in range(1, 5)]


def _clipped_matches(a: _Ngrams, b: _Ngrams) -> list[int]:
    """BLEU's clipped n-gram matches (n = 1..4) between two sentences: sum over n-grams of the
    smaller of the two counts, the same whichever is the hypothesis."""
    matches = []
    for a_counts, b_counts in zip(a.counts, b.counts):
        small, large = (a_counts, b_counts) if len(a_counts) <= len(b_counts) else (b_counts, a_counts)
        matches.append(sum([min(count, large.get(gram, 0)) for gram, count in small.items()]))
    return matches


def _bleu_of_matches(matches: list[int], hyp_length: int, ref_length: int) -> float:
    """sentence_bleu's number from the clipped matches, in nltk's own order of float operations
    (corpus_bleu with one reference, method4 smoothing at its k, fsum of the weighted logs): equal
    bit for bit (tests/diffusion/test_metrics.py checks it against nltk)."""
    if matches[0] == 0:
        return 0.0
    p_n, smoothed = [], 1
    for n, numerator in enumerate(matches):
        denominator = max(1, hyp_length - n)
        if numerator == 0 and hyp_length > 1:  # method4: 1 / (2^k' K / ln(len)) over the denominator
            p_n.append(1 / (2**smoothed * _METHOD4_K / math.log(hyp_length)) / denominator)
            smoothed += 1
        else:
            p_n.append(numerator / denominator)
    bp = 1 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return float(bp * math.exp(math.fsum(0.25 * math.log(p) for p in p_n if p > 0)))


def mbr_select(candidates: list[str]) -> int:
    """DiffuSeq's MBR (selectBest): the candidate with the highest summed BLEU against the others.
    Each candidate's n-grams are counted once, and each pair's matches once for both directions:
    scoring every ordered pair with nltk from the strings made MBR over 10 candidates cost more
    than sampling them."""
    counted = [_Ngrams(c) for c in candidates]
    m = np.zeros((len(counted), len(counted)))
    for i, a in enumerate(counted):
        for j in range(i + 1, len(counted)):
            b = counted[j]
            matches = _clipped_matches(a, b)
            m[i, j] = _bleu_of_matches(matches, a.length, b.length)
            m[j, i] = _bleu_of_matches(matches, b.length, a.length)
    return int(np.argmax(m.sum(-1)))  # numpy's sum and argmax (first index on ties), as DiffuSeq
