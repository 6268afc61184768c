"""Evaluation metrics, matching DiffuSeq's scripts/eval_seq2seq.py (Feb 2023 version).

Text is compared as DiffuSeq does: whitespace-split tokens of the decoded strings, no extra
normalisation, so numbers are on the same scale as the DiffuSeq paper.
"""

from __future__ import annotations

import json
import os

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import sentence_bleu as _nltk_sentence_bleu

# which model BERTScore loads lives in a module without numpy, for the pipeline's login node
from .bertscore_model import (DEFAULT_BERTSCORE_MODEL, OFFLINE_PACKAGE_MODEL,  # noqa: F401
                              default_offline_bertscore_model, resolve_bertscore_model)

_SMOOTH = SmoothingFunction().method4

# DiffuSeq's evaluator strips these BERT special tokens from every string before scoring.
_SPECIAL = ("[CLS]", "[SEP]", "[PAD]")


def clean(text: str) -> str:
    for tok in _SPECIAL:
        text = text.replace(tok, "")
    return text.strip()


def sentence_bleu(hyp: str, ref: str) -> float:
    # Default 4-gram weights; method4 smoothing so short sentences don't collapse to 0.
    # (DiffuSeq's pre-Feb-2023 script had hyp and ref swapped; the fixed order is used here.)
    return float(_nltk_sentence_bleu([ref.split()], hyp.split(), smoothing_function=_SMOOTH))


def bleu(hyps, refs) -> float:
    # Mean of sentence-level BLEU (0-1), not corpus BLEU: that is what DiffuSeq reports.
    return float(np.mean([sentence_bleu(h, r) for h, r in zip(hyps, refs, strict=True)]))


def _rouge_scorer():
    # imported here: sampling (MBR) needs only nltk, and GPU images often lack rouge_score
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


def mbr_select(candidates: list[str]) -> int:
    """DiffuSeq's MBR (selectBest): the candidate with the highest summed BLEU against the others."""
    n = len(candidates)
    m = np.array([[sentence_bleu(candidates[i], candidates[j]) for j in range(n)]
                  for i in range(n)])
    np.fill_diagonal(m, 0.0)
    return int(np.argmax(m.sum(-1)))  # argmax takes the first index on ties, as DiffuSeq
