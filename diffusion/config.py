"""The typed config tree of the library: data, model, diffusion, training, sampling.

Every section is a frozen dataclass. `from_dict` builds one from plain data (YAML or JSON) and
rejects unknown keys, wrong types and missing required fields with an error that names the key
and lists the valid ones; the pipeline reuses it for job specs and adds file and line.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type. `key` is its dotted path."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


# `[CLS] x [SEP] [SEP] [CLS] y [SEP]` with one token of x and one of y: a shorter sequence has no
# room for a source or a target (data.build_sequence)
MIN_SEQ_LEN = 7


@dataclass(frozen=True)
class DataConfig:
    train: str | None = None  # DiffuSeq-format jsonl ({"src", "trg"} a line)
    valid: str | None = None
    test: str | None = None
    hub_dataset: str | None = None  # e.g. "AlekseyKorshuk/quora-question-pairs"; rebuilds DiffuSeq's split
    synthetic_pairs: int | None = None  # make diffusion.corpus's offline demo corpus of this many train pairs
    vocab_size: int = 30522  # BPE merges stop earlier on small corpora
    lowercase: bool = True  # DiffuSeq used bert-base-uncased
    seq_len: int = 128  # at least MIN_SEQ_LEN
    max_train_pairs: int | None = None  # a slice of the train split, for tests and demos
    # Trimmed sequences (budget recipe): a pair takes its source part plus a target budget of
    # ceil(target_ratio * source tokens) + target_margin positions (its [CLS] and [SEP] included;
    # capped at seq_len; a longer target loses its tail, its [SEP] kept), batches are drawn from
    # length-sorted pools and cut to their widest sequence, and sampling decodes the same widths.
    # The target's length stays the model's decision: it emits [SEP] and PAD inside the budget.
    # False: every sequence is seq_len wide (DiffuSeq).
    trim: bool = False
    target_ratio: float = 1.5  # with target_margin 8, 99 % of QQP's valid targets fit
    target_margin: int = 8


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 0  # 0: taken from the tokenizer
    embed_dim: int = 128  # the diffusion space (word embedding width)
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_size: int = 3072
    dropout: float = 0.1
    time_embed_dim: int = 128
    max_positions: int = 128
    # self-conditioning: the denoiser also sees its previous estimate of z_0 (zeros when there is
    # none, and in half of the training examples), concatenated to z_t (SeqDiffuSeq, CDCD)
    self_condition: bool = False
    # trimmed sequences (data.trim) only: each sequence attends to, and is scored at, the positions
    # of its own width (source plus target budget) alone; a batch's padding past that width is
    # masked out of attention and the loss and decodes as PAD, so a sequence's output does not
    # depend on how wide its batch was cut. False: every position of the batch (DiffuSeq).
    width_mask: bool = False
    # where each layer's LayerNorm sits: "post" after the residual sum (BERT, DiffuSeq), "pre" on
    # the branch's input with one more LayerNorm after the last layer (GPT-2, DiT): the residual
    # stream is never normalised, which keeps high learning rates stable
    norm: Literal["post", "pre"] = "post"


@dataclass(frozen=True)
class DiffusionConfig:
    steps: int = 2000
    schedule: Literal["sqrt", "linear", "cosine"] = "sqrt"
    noising: Literal["target", "full"] = "target"
    timestep_sampler: Literal["lossaware", "uniform"] = "lossaware"
    rescale_timesteps: bool = True  # model sees t * 1000 / T, as DiffuSeq
    # weight of the anchor loss: cross-entropy of lm_head(predicted z_0) against the tokens at the
    # noised positions (Difformer); 0 leaves DiffuSeq's loss, which only logs it
    anchor_loss: float = 0.0
    # full noising only: the share of the target's noise variance (1 - abar_t) that the source
    # positions get at each t, z_src = sqrt(1 - s (1 - abar_t)) z_0 + sqrt(s (1 - abar_t)) eps, in
    # training and in conditional sampling. 1: the source as noisy as the target (the report's
    # full noising); towards 0 the source stays nearly clean, as under target noising, while it is
    # still reconstructed by the loss. Joint sampling needs 1 (it denoises both at one level).
    source_noise: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 50_000
    batch_size: int = 2048  # sequences per GPU (rank) per optimizer step
    # the mean gradient over batch_size is the same for any split; on an H100/H200 with compile, 512
    # is the fastest (fewer ZeRO bucket rounds than 64; the logits stay under 2^31 elements)
    micro_batch_size: int = 512
    lr: float = 1e-4
    weight_decay: float = 0.0
    # AdamW's second-moment decay (torch's default, DiffuSeq's). Lower (0.95, 0.98) forgets a
    # gradient-norm history faster, a common remedy for the loss spikes of short high-rate runs
    adam_beta2: float = 0.999
    lr_schedule: Literal["linear", "constant"] = "linear"
    warmup_steps: int = 0  # the rate rises linearly over these first steps (DiffuSeq: none)
    ema_rate: float = 0.9999
    # EMA rate min(ema_rate, (1 + n) / (10 + n)) after optimizer step n, so that a short run's
    # average is not mostly its initial weights (0.9999^500 = 0.95); false: ema_rate throughout
    ema_warmup: bool = False
    grad_clip: float = 0.0  # 0: none (DiffuSeq)
    zero_stage: int = 2
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    seed: int = 102
    save_every: int = 10_000
    log_every: int = 100
    time_limit_s: float | None = None  # checkpoint and stop before this much wall time has passed
    # speed options, GPU only (the CPU path stays eager fp32 AdamW, as the tests check it bit for bit):
    fused_optimizer: bool = True  # torch AdamW(fused=True): one kernel for all parameters
    compile: bool = True  # torch.compile the loss (denoiser + decoder NLL); not under ZeRO-3, whose hooks it breaks


Solver = Literal["ddpm", "ddim", "dpm++2m"]  # how reverse diffusion moves z (diffusion/sampling.py)


@dataclass(frozen=True)
class SampleConfig:
    steps: int | None = None  # None: all T steps; fewer respaces the schedule (time-uniform)
    # how z moves from one step to the next: DiffuSeq's ancestral DDPM, DDIM, or DPM-Solver++(2M),
    # the last two made for few steps (DiffuSeq-v2: 10-20 DPM-Solver++ steps ~ 2000 DDPM steps)
    solver: Solver = "ddpm"
    eta: float = 0.0  # ddim only: the share of the posterior's noise added back at each step
    clamp_step: int = 0  # round x0 to the nearest embedding at every step t >= clamp_step
    # how x0 is rounded to a token: the nearest embedding in L2 (DiffuSeq), or the decoder's choice,
    # argmax lm_head(x0), as the final read-out and the anchor loss choose. A blurry x0 (high noise)
    # is nearest in L2 to the embedding of least norm, whatever it points at: PAD once PAD's
    # embedding has shrunk (all outputs empty, DiffuSeq #50), or a rare, untrained token.
    # `soft`: not a token at all but the decoder's expected embedding, sum_v softmax(lm_head(x0) /
    # soft_temperature)_v e_v: a blurry x0 stays a blend of its likely tokens instead of committing
    # to one (committed early, adjacent positions often take the same word), a sharp one lands on
    # its token (CDCD's score interpolation, applied to DiffuSeq's x0 estimate)
    rounding: Literal["l2", "logits", "soft"] = "l2"
    soft_temperature: float = 1.0  # rounding soft only
    # lowers PAD's score by this much (in logits) wherever a token is chosen: at each rounding and
    # in the read-out. A blurry x0 at high noise often makes PAD the likeliest token of a position,
    # and a PAD rounded in early stays: a hole inside the output (decoding drops it) or an early
    # end. 0: DiffuSeq.
    pad_penalty: float = 0.0
    # the first this many positions of each target choose among text tokens only, at each rounding
    # and in the read-out, so no output is empty (a minimum length). A model that ends a long
    # source's target at once, all PAD or [SEP], then says at least its likeliest words. 0: DiffuSeq.
    min_target_tokens: int = 0
    seeds: tuple[int, ...] = (101,)  # one candidate per seed; MBR picks among them when > 1
    batch_size: int = 64
    full_mode: Literal["conditional", "joint"] = "conditional"  # how a full-noising model samples
    max_examples: int | None = None
    use_ema: bool = True  # sampling reads the EMA weights a checkpoint exports; the spec refuses false
    compile: bool = True  # torch.compile the denoiser for the reverse steps (GPU only)
    # on GPU: bf16 weights (fastest; the state z and the rounding scores stay fp32), or fp32 weights
    # under bf16 autocast; the CPU samples in fp32
    weights: Literal["bf16", "fp32"] = "bf16"
    # with bf16 weights on GPU: bias + GELU of each feed-forward inside its matmul (cuBLASLt
    # epilogue, tanh-approximated GELU); false keeps the exact GELU as a separate kernel
    gelu_epilogue: bool = True


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert it (lists to tuples, dicts to dataclasses)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(key, "may not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {type(value).__name__}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {key}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, strictly. Errors name the dotted key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(key, f"unknown key; valid keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "required key is missing")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain data (JSON-ready) from a dataclass tree; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def load_config(path: str | Path) -> Config:
    """A Config from a YAML or JSON file (YAML is a superset of JSON)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError("", f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: expected a mapping at the top level")
    try:
        return from_dict(Config, data)
    except ConfigError as err:
        located = ConfigError("", f"{path}: {err}")
        located.key = err.key
        raise located from None
