"""The typed config tree of the library: data, model, diffusion, training, sampling.

Every section is a frozen dataclass. `from_dict` builds one from plain data (YAML or JSON) and
rejects unknown keys, wrong types and missing required fields with an error that names the key
and lists the valid ones; then it runs the class's `check()`: each section checks its own values
(a range, a value another of its keys rules out), and `Config` the rules between sections. The
pipeline reuses all of it for job specs and adds file and line, so `python -m diffusion.train`
refuses exactly what `pipeline submit` refuses.
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
    """A config value is missing, unknown, of the wrong type or out of its range. `key` is its
    dotted path; `missing` says that it was required and not given."""

    def __init__(self, key: str, message: str, missing: bool = False):
        self.key, self.message, self.missing = key, message, missing
        super().__init__(f"{key}: {message}" if key else message)


def require(ok: bool, key: str, message: str) -> None:
    """A ConfigError naming `key` unless `ok`."""
    if not ok:
        raise ConfigError(key, message)


def at_least(section, name: str, low: float, optional: bool = False) -> None:
    """`section.name` is at least `low` (or None, where `optional`)."""
    value = getattr(section, name)
    require((optional and value is None) or (value is not None and value >= low), name,
            f"must be at least {low}, got {value!r}")


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

    def check(self) -> None:
        require(bool(self.train or self.hub_dataset or self.synthetic_pairs), "",
                "name a source: data.train, data.hub_dataset or data.synthetic_pairs")
        at_least(self, "synthetic_pairs", 1, optional=True)
        at_least(self, "max_train_pairs", 1, optional=True)
        at_least(self, "vocab_size", 1)
        require(self.seq_len >= MIN_SEQ_LEN, "seq_len", f"must be at least {MIN_SEQ_LEN} ([CLS] x [SEP] [SEP] [CLS] y "
                f"[SEP] with one source and one target token), got {self.seq_len}")
        require(self.target_ratio >= 0, "target_ratio", f"must be at least 0, got {self.target_ratio}")
        at_least(self, "target_margin", 3)  # [CLS], one token and [SEP]


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

    def check(self) -> None:
        for name in ("embed_dim", "hidden_size", "num_layers", "num_heads", "ffn_size", "time_embed_dim",
                     "max_positions"):
            at_least(self, name, 1)
        at_least(self, "vocab_size", 0)
        require(self.hidden_size % self.num_heads == 0, "num_heads",
                f"model.hidden_size ({self.hidden_size}) is not a multiple of num_heads ({self.num_heads})")
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")


# the names of the registries' entries: noising.NOISING, solvers.SOLVERS, rounding.ROUNDINGS,
# schedule.SCHEDULES, timesteps.TIMESTEP_SAMPLERS (each checks that it has a class a name)
NoisingName = Literal["target", "full"]
SolverName = Literal["ddpm", "ddim", "dpm++2m"]
RoundingName = Literal["l2", "logits", "soft"]
AttentionName = Literal["default", "cudnn", "flash", "efficient", "math"]  # model.SDPA_BACKENDS
ScheduleName = Literal["sqrt", "linear", "cosine"]
TimestepSamplerName = Literal["lossaware", "uniform"]


@dataclass(frozen=True)
class DiffusionConfig:
    steps: int = 2000
    schedule: ScheduleName = "sqrt"
    noising: NoisingName = "target"
    timestep_sampler: TimestepSamplerName = "lossaware"
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
    # each target's end, its [SEP] and the PADs after it, stays clean in training as the source
    # does under target noising: the model is told how long the target is and learns to write
    # exactly that many tokens. Sampling then fixes every length beforehand and holds that end
    # clean (sample.target_length: predicted). false: DiffuSeq, the model places PAD itself
    clean_target_end: bool = False
    # DiffuSeq-v2's discrete noise (its soft absorbing state): in training, each noised target
    # position of z_t is replaced by one learned vector with probability absorb_rate *
    # sqrt(1 - abar_t), so the denoiser also learns to fill in positions that carry nothing, as a
    # masked language model does. The Gaussian process and every solver stay DiffuSeq's (v2 also
    # centres the noise on that vector); sampling never absorbs. 0: DiffuSeq; v2 trains QQP at 0.5
    absorb_rate: float = 0.0

    def check(self) -> None:
        at_least(self, "steps", 1)
        at_least(self, "anchor_loss", 0)
        require(0 <= self.absorb_rate <= 1, "absorb_rate", f"must be in [0, 1], got {self.absorb_rate}")
        require(0 <= self.source_noise <= 1, "source_noise", f"must be in [0, 1], got {self.source_noise}")


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
    # the whole step (gather, loss, backward, clipping, AdamW, log sums) replayed from CUDA graphs, one a
    # batch width (graphs.py): one rank at ZeRO-0, one micro-batch a step; on a CPU it runs eagerly
    cuda_graphs: bool = False

    def check(self) -> None:
        for name in ("steps", "batch_size", "micro_batch_size", "log_every"):
            at_least(self, name, 1)
        require(self.batch_size % self.micro_batch_size == 0, "batch_size",
                f"{self.batch_size} is not a multiple of train.micro_batch_size ({self.micro_batch_size})")
        require(1 <= self.save_every <= self.steps, "save_every",
                f"must be between 1 and train.steps ({self.steps}), got {self.save_every}")
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(0 <= self.ema_rate <= 1, "ema_rate", f"must be in [0, 1], got {self.ema_rate}")
        require(self.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        at_least(self, "weight_decay", 0)
        require(0 < self.adam_beta2 < 1, "adam_beta2", f"must be in (0, 1), got {self.adam_beta2}")
        at_least(self, "grad_clip", 0)
        at_least(self, "warmup_steps", 0)
        require(self.time_limit_s is None or self.time_limit_s > 0, "time_limit_s",
                f"must be positive, got {self.time_limit_s}")
        require(not self.cuda_graphs or self.zero_stage == 0, "cuda_graphs",
                f"needs train.zero_stage 0 (one rank, nothing partitioned), got {self.zero_stage}")
        require(not self.cuda_graphs or self.batch_size == self.micro_batch_size, "cuda_graphs",
                f"needs one micro-batch a step (train.batch_size {self.batch_size} = train.micro_batch_size "
                f"{self.micro_batch_size})")


@dataclass(frozen=True)
class SampleConfig:
    steps: int | None = None  # None: all T steps; fewer respaces the schedule (time-uniform)
    # how z moves from one step to the next: DiffuSeq's ancestral DDPM, DDIM, or DPM-Solver++(2M),
    # the last two made for few steps (DiffuSeq-v2: 10-20 DPM-Solver++ steps ~ 2000 DDPM steps)
    solver: SolverName = "ddpm"
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
    rounding: RoundingName = "l2"
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
    # how long each output is. `learned` (DiffuSeq): the model ends it with PAD, and a PAD rounded
    # in inside it is a hole that decoding drops. `predicted`: fixed before the first step at the
    # median length of the training targets whose source was as long (the checkpoint's
    # target_lengths.json, diffusion/lengths.py); the target's [SEP] and PADs are held there and
    # every position before them chooses among text tokens, at each rounding and in the read-out
    target_length: Literal["learned", "predicted"] = "learned"
    # with target_length predicted: seed i's outputs are length_offsets[i % len] tokens longer than
    # predicted (a length beam across MBR's candidates; at least 1 token, at most the target part's room)
    length_offsets: tuple[int, ...] = (0,)
    seeds: tuple[int, ...] = (101,)  # one candidate per seed; MBR picks among them when > 1
    # the denoiser is told a timestep at least this share of the way to the last one, while the
    # solver moves z by the true one: told the noise is larger than it is, the denoiser leans on
    # the source more (Dinoiser's condition-enhanced denoiser tells it the largest, 1.0). 0: DiffuSeq
    time_floor: float = 0.0
    batch_size: int = 64
    full_mode: Literal["conditional", "joint"] = "conditional"  # how a full-noising model samples
    max_examples: int | None = None
    use_ema: bool = True  # sampling reads the EMA weights a checkpoint exports; the spec refuses false
    compile: bool = True  # torch.compile the denoiser for the reverse steps (GPU only)
    # on a GPU: the steps between a batch's first and last replayed from one CUDA graph
    # (sample_graphs.py), which takes the host out of a few-step decode's loop; the same tokens
    cuda_graphs: bool = False
    # on a GPU: the attention kernel of the reverse steps, one of scaled_dot_product_attention's
    # backends, or PyTorch's own choice (default). On an H100 or H200 that choice is cuDNN's, which
    # builds a plan for every new batch shape: about a second of a fresh decode over QQP's widths
    # (BENCHMARKS.md). Flash attention takes no mask (model.width_mask).
    attention: AttentionName = "default"
    # on GPU: bf16 weights (fastest; the state z and the rounding scores stay fp32), or fp32 weights
    # under bf16 autocast; the CPU samples in fp32
    weights: Literal["bf16", "fp32"] = "bf16"
    # with bf16 weights on GPU: bias + GELU of each feed-forward inside its matmul (cuBLASLt
    # epilogue, tanh-approximated GELU); false keeps the exact GELU as a separate kernel
    gelu_epilogue: bool = True

    def check(self) -> None:
        at_least(self, "steps", 1, optional=True)
        at_least(self, "clamp_step", 0)
        require(0 <= self.eta <= 1, "eta", f"must be in [0, 1], got {self.eta}")
        at_least(self, "batch_size", 1)
        at_least(self, "pad_penalty", 0)
        at_least(self, "min_target_tokens", 0)
        require(0 <= self.time_floor <= 1, "time_floor", f"must be in [0, 1], got {self.time_floor}")
        require(self.soft_temperature > 0, "soft_temperature", f"must be positive, got {self.soft_temperature}")
        require(self.use_ema, "use_ema", "false is not supported: a checkpoint exports only its EMA weights for sampling "
                "(the raw ones stay in the DeepSpeed state)")
        at_least(self, "max_examples", 1, optional=True)
        require(len(self.seeds) > 0, "seeds", "needs at least one seed")
        require(len(self.length_offsets) > 0, "length_offsets", "needs at least one offset (0: the predicted length)")
        require(self.target_length == "predicted" or self.length_offsets == (0,), "length_offsets",
                f"is read with sample.target_length predicted only (it is {self.target_length!r})")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def check(self) -> None:
        """The rules between sections (each section has checked its own values), the chosen noising
        mode's, solver's and rounding's among them (which keys each reads)."""
        from .noising import NOISING
        from .rounding import ROUNDINGS
        from .solvers import SOLVERS

        d, s = self.data, self.sample
        require(d.seq_len <= self.model.max_positions, "data.seq_len",
                f"{d.seq_len} is longer than model.max_positions ({self.model.max_positions})")
        # a trimmed target has target_margin positions at least: [CLS], the tokens, [SEP]
        require(not d.trim or s.min_target_tokens <= d.target_margin - 2, "sample.min_target_tokens",
                f"{s.min_target_tokens} do not fit a trimmed target of data.target_margin {d.target_margin} "
                "positions with its [CLS] and [SEP]")
        require(not self.model.width_mask or d.trim, "model.width_mask",
                "needs data.trim: untrimmed, every sequence is seq_len wide and there is no padding past it to mask")
        require(s.attention != "flash" or not self.model.width_mask, "sample.attention",
                "flash attention takes no mask, and model.width_mask masks each sequence's padding (try efficient)")
        require(not self.diffusion.clean_target_end or s.target_length == "predicted", "diffusion.clean_target_end",
                "needs sample.target_length: predicted: a model told each target's length samples with lengths "
                f"fixed beforehand (sample.target_length is {s.target_length!r})")
        for chosen in (NOISING[self.diffusion.noising], SOLVERS[s.solver], ROUNDINGS[s.rounding]):
            chosen.check(self)


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
            raise ConfigError(key, "required key is missing", missing=True)
        elif dataclasses.is_dataclass(hints[name]):  # a section left out: its defaults, checked all the same
            kwargs[name] = checked(f.default_factory(), key)
    return checked(cls(**kwargs), prefix, nested=False)


def checked(section: Any, prefix: str = "", nested: bool = True) -> Any:
    """`section` after its `check()` (and, with `nested`, its sub-sections' first), keys named
    from the top of the tree."""
    for f in dataclasses.fields(section) if nested else ():
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            checked(value, ".".join(part for part in (prefix, f.name) if part))
    if hasattr(section, "check"):
        try:
            section.check()
        except ConfigError as err:  # its keys are the section's own
            raise ConfigError(".".join(part for part in (prefix, err.key) if part), err.message) from None
    return section


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
