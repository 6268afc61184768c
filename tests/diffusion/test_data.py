import json
import random
from pathlib import Path

import pytest
import torch

from diffusion import data
from diffusion.pairs import diffuseq_split
from tests.conftest import QQP_TRAIN, needs_qqp
from tests.helpers import integration
from diffusion.config import MIN_SEQ_LEN
from diffusion.data import CLS, PAD, SEP, DataError

QQP = QQP_TRAIN.parent
N_PAIRS = 3000


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    # keep the Arrow cache that `datasets` writes out of the home directory
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    if not QQP_TRAIN.is_file():
        pytest.skip(needs_qqp.kwargs["reason"])
    import datasets.config

    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = str(tmp_path_factory.mktemp("hf_cache"))
    try:
        return data.load_pairs(QQP / "train.jsonl", limit=N_PAIRS)
    finally:
        datasets.config.HF_DATASETS_CACHE = old


@pytest.fixture(scope="module")
def tok(pairs):
    return data.train_tokenizer([t for p in pairs for t in (p["src"], p["trg"])], vocab_size=2000)


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_pairs_reads_qqp(pairs):
    assert len(pairs) == N_PAIRS
    first = json.loads((QQP / "train.jsonl").open().readline())
    assert pairs[0] == {"src": first["src"], "trg": first["trg"]}
    assert all(set(p) == {"src", "trg"} and isinstance(p["src"], str) for p in pairs)


def test_load_pairs_skips_blank_lines_and_limits(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", ['{"src": "a", "trg": "b"}', "", "  ", '{"src": "c", "trg": "d"}'])
    assert data.load_pairs(path) == [{"src": "a", "trg": "b"}, {"src": "c", "trg": "d"}]
    assert data.load_pairs(path, limit=1) == [{"src": "a", "trg": "b"}]


@pytest.mark.parametrize(
    "bad", ['{"src": "a", "trg": ', '{"src": "a"}', '{"src": 3, "trg": "b"}', '["a", "b"]']
)
def test_load_pairs_names_file_and_line(tmp_path, bad):
    good = '{"src": "a", "trg": "b"}'
    path = write_lines(tmp_path / "bad.jsonl", [good, good, bad, good])
    with pytest.raises(DataError) as err:
        data.load_pairs(path)
    assert f"{path}:3" in str(err.value)


def test_load_pairs_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl"):
        data.load_pairs(tmp_path / "nope.jsonl")


def test_diffuseq_split():
    rng = random.Random(0)
    rows = [
        {"id": i, "question1": f"q1 {i}", "question2": f"q2 {i}", "is_duplicate": int(i % 3 != 0)}
        for i in range(7500)
    ]  # 5,000 positives
    rng.shuffle(rows)
    split = diffuseq_split(rows)
    assert [len(split[k]) for k in ("test", "valid", "train")] == [2500, 2048, 452]
    ids = [int(p["src"].split()[1]) for k in ("test", "valid", "train") for p in split[k]]
    assert ids == [i for i in range(7500) if i % 3 != 0]
    assert split["test"][0] == {"src": "q1 1", "trg": "q2 1"}
    with pytest.raises(DataError):
        diffuseq_split(rows[:100])


def test_tokenizer(tok):
    assert [tok.token_to_id(t) for t in data.SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.get_vocab_size() <= 2000
    sentence = "what is the best way to learn python ?"
    ids = tok.encode(sentence, add_special_tokens=False).ids
    assert data.UNK not in ids
    assert tok.decode(ids) == sentence
    # normalised like bert-base-uncased: lowercased, punctuation split off, accents stripped
    assert data.decode(tok, tok.encode("What's the Best café?").ids) == "what ' s the best cafe ?"


def test_save_load_tokenizer(tmp_path, tok):
    path = tmp_path / "tokenizer.json"
    data.save_tokenizer(tok, path)
    assert [p.name for p in tmp_path.iterdir() if p.name != "hf_cache"] == ["tokenizer.json"]
    loaded = data.load_tokenizer(path)
    assert loaded.encode("how do i learn ?").ids == tok.encode("how do i learn ?").ids
    with pytest.raises(DataError, match="missing.json"):
        data.load_tokenizer(tmp_path / "missing.json")


def test_build_sequence_layout():
    ids, mask = data.build_sequence([10, 11], [20, 21, 22], seq_len=12)
    assert ids == [CLS, 10, 11, SEP, SEP, CLS, 20, 21, 22, SEP, PAD, PAD]
    assert mask == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]


def test_build_sequence_truncation():
    # 6 + 2 content tokens + 5 specials = 13 > 10: the longer side loses its last 3 tokens
    ids, mask = data.build_sequence([10, 11, 12, 13, 14, 15], [20, 21], seq_len=10)
    assert ids == [CLS, 10, 11, 12, SEP, SEP, CLS, 20, 21, SEP]
    assert mask == [0] * 6 + [1] * 4
    # the target side when it is the longer one
    ids, _ = data.build_sequence([10], [20, 21, 22, 23, 24, 25, 26], seq_len=10)
    assert ids == [CLS, 10, SEP, SEP, CLS, 20, 21, 22, 23, SEP]
    # equally long sides both lose a token, as in DiffuSeq, leaving one PAD
    ids, _ = data.build_sequence([10, 11, 12], [20, 21, 22], seq_len=10)
    assert ids == [CLS, 10, 11, SEP, SEP, CLS, 20, 21, SEP, PAD]
    for n in range(MIN_SEQ_LEN, 20):
        ids, mask = data.build_sequence(list(range(10, 30)), list(range(40, 55)), seq_len=n)
        assert len(ids) == len(mask) == n
        assert ids.count(SEP) == 3 and ids.count(CLS) == 2
        source, target = data.split_sequence(ids, mask)
        assert source[-2:] == [SEP, SEP] and SEP in target
        assert len(source) >= 4 and len(target) >= 3  # a token of each side at the least
    with pytest.raises(ValueError, match="at least 7"):
        data.build_sequence([10], [20], seq_len=MIN_SEQ_LEN - 1)


def test_encode_decode_round_trip(tmp_path, tok, pairs):
    some = pairs[:64]
    input_ids, input_mask = data.encode_pairs(tok, some, seq_len=128)
    assert input_ids.shape == input_mask.shape == (64, 128)
    assert input_ids.dtype == input_mask.dtype == torch.int64
    for row, m, pair in zip(input_ids, input_mask, some):
        source, target = data.split_sequence(row, m)
        assert data.decode(tok, source) == data.decode(tok, tok.encode(pair["src"]).ids)
        assert data.decode(tok, target) == data.decode(tok, tok.encode(pair["trg"]).ids)
    source, target = data.split_sequence(input_ids[0], input_mask[0])
    assert data.decode(tok, target) == "are girls really so different from boys ?"
    assert data.decode(tok, source) == "why are boys so different from girls ?"

    path = tmp_path / "train.pt"
    data.save_encoded(path, input_ids, input_mask)
    loaded_ids, loaded_mask = data.load_encoded(path)
    assert torch.equal(loaded_ids, input_ids) and torch.equal(loaded_mask, input_mask)
    assert not list(tmp_path.glob("*.tmp"))

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated.pt"):
        data.load_encoded(truncated)
    with pytest.raises(DataError, match="absent.pt"):
        data.load_encoded(tmp_path / "absent.pt")


def test_encode_no_pairs(tok):
    input_ids, input_mask = data.encode_pairs(tok, [], seq_len=16)
    assert input_ids.shape == input_mask.shape == (0, 16)


@needs_qqp
@integration
def test_tokenizer_ids_are_the_same_in_every_process(tmp_path):
    # the trainer numbers its alphabet in hash-map order; a resumed run in a new process must
    # get the same ids, so train twice in fresh interpreters and compare the files
    import subprocess
    import sys

    script = (
        "import json, sys; from diffusion.data import train_tokenizer, save_tokenizer;"
        f"texts = [t for l in open({str(QQP / 'valid.jsonl')!r}) for t in json.loads(l).values()];"
        "save_tokenizer(train_tokenizer(texts, 800), sys.argv[1])"
    )
    repo = Path(__file__).resolve().parents[2]
    for name in ("a.json", "b.json"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True, cwd=repo)
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
