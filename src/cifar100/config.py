"""Run configuration: dataclasses, TOML presets, and dotted overrides (`--set train.lr=3e-4`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifar100.errors import ConfigError


@dataclass
class DataConfig:
    dataset: str = "cifar100"  # cifar100 | cifar10 | folder
    path: str | None = None  # archive, extracted folder or image folder; None downloads CIFAR
    label: str = "fine"  # CIFAR-100 only: fine (100 classes) | coarse (20 superclasses)
    image_size: int = 32  # image folders are decoded to this square size
    val_fraction: float = 0.1  # held out of train, stratified, for per-epoch validation
    test_fraction: float = 0.2  # image folders with no train/test split
    limit_train: int | None = None  # seeded subset, for quick runs
    limit_test: int | None = None
    # image folders: refuse files in class folders that are not readable images (readme.txt,
    # a corrupt JPEG) instead of skipping them with one warning
    strict: bool = False
    # an audit.csv (`cifar100 audit`): the training images of its train rows are left out
    exclude: str | None = None

    def class_count(self) -> int | None:
        """CIFAR's classes as labelled (100 fine, 20 coarse; 10); None for an image folder,
        whose classes are its data's."""
        if self.dataset == "cifar100":
            return 100 if self.label == "fine" else 20
        return 10 if self.dataset == "cifar10" else None

    def decoded_size(self) -> int:
        """The side of the decoded images: CIFAR's 32, an image folder's image_size."""
        return 32 if self.dataset != "folder" else self.image_size


@dataclass
class ModelConfig:
    backbone: str = "resnet50v2"
    weights: str = "imagenet"  # imagenet | none | path to a weights file
    resize: int = 7  # bilinear upsampling factor applied to the input (32 -> 224)
    head_units: int = 256
    dropout: float = 0.25
    activation: str = "relu"  # relu | leaky_relu
    leaky_slope: float = 0.01
    # Keras's convention: moving = momentum * moving + (1 - momentum) * batch. Keras's 0.99
    # needs a few hundred steps to settle; short runs from scratch do better with 0.9.
    bn_momentum: float = 0.99
    preprocess: str | None = None  # tf|torch|none|raw|lite; None: as the weights expect
    init: str | None = None  # start from this cifar100 checkpoint's weights (e.g. an imported one)


@dataclass
class TrainConfig:
    epochs: int = 12  # total, frozen epochs included
    freeze_epochs: int = 2  # head warm-up with the backbone frozen (batch norm in inference mode)
    batch_size: int = 128
    head_lr: float = 1e-3  # Adam, frozen phase
    optimizer: str = "sgd"  # fine-tuning phase: sgd | adam | adamw
    lr: float = 0.01  # fine-tuning peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5  # linear warm-up at the start of fine-tuning
    label_smoothing: float = 0.0
    crop_padding: int = 4  # random crop with this padding; 0 disables
    flip: bool = True
    policy: str = "none"  # extra per-image policy on the device: none | trivial | randaugment
    policy_magnitude: int = 9  # randaugment's magnitude (0..30 scale, as in the paper)
    policy_ops: int = 2  # randaugment's operations per image
    random_erasing: float = 0.0  # probability of erasing one random rectangle per image
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) for mixup; 0 disables
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) for cutmix; 0 disables
    mix_prob: float = 1.0  # probability that a batch is mixed at all (when either alpha > 0)
    backbone_lr_scale: float = 1.0  # the backbone's rate relative to the head's when fine-tuning
    # Batch norm in the backbone while fine-tuning: batch (batch statistics, moving ones
    # updated) | frozen (moving statistics, not updated; scales and offsets still train; Keras's
    # fine-tuning guide: call the base model with training=False)
    finetune_bn: str = "batch"
    accumulate: int = 1  # micro-batches per step (gradient accumulation) on each process
    ema_decay: float = 0.0  # an EMA of the weights, evaluated beside them (e.g. 0.9998); 0: off
    clip_grad_norm: float = 0.0  # clip the global gradient norm to this; 0 disables
    sync_bn: bool = False  # distributed on CUDA: batch-norm statistics over the whole batch
    compile: bool = False  # torch.compile the model (CUDA; the first steps are slow)
    mode: str = "finetune"  # finetune: train through the backbone | features: frozen, cached
    feature_flip: bool = True  # features mode: also cache features of flipped images
    amp: bool = True  # bf16 autocast where the device supports it
    channels_last: bool = True
    seed: int = 0
    deterministic: bool = False  # deterministic kernels only (slower on GPUs; CPU runs already are)
    device: str = "auto"  # auto | cuda | mps | cpu
    eval_batch_size: int = 256
    log_every: int = 20  # steps between host synchronisations for the progress bar
    # Also save the exact position this often within an epoch (resume is exact from any
    # step; Ctrl-C / SIGTERM save it too); 0: at epoch ends only.
    checkpoint_minutes: float = 10.0
    # Stop when validation top-1 has not improved for this many epochs, then test the best
    # epoch's weights (best.pt); 0: off, every epoch is trained.
    early_stopping: int = 0
    # The share of validation images the "none of these" threshold accepts (runtime/trust.py),
    # fitted at each epoch's end with the temperature that calibrates the probabilities.
    ood_acceptance: float = 0.95
    # The weights the run's test, report and exports use: best (the best validation epoch's,
    # best.pt) | last. Without a validation split (data.val_fraction=0) the last are used.
    final: str = "best"
    # Fit the fine-tuning recipe (rate, batch-norm mode, warm-up, epochs) to the number of
    # training images: engine/recipe.py. Settings you give yourself are kept as given.
    adapt: bool = True


@dataclass
class TrackConfig:
    # MLflow: "" off; "local" a store inside the runs root (RUNS_ROOT/mlflow.db, no server);
    # else a tracking URI (http://host:5000 for a tracking server, sqlite:///file.db, ...)
    mlflow: str = ""
    experiment: str = "cifar100"  # the MLflow experiment the run is logged to
    tensorboard: bool = False  # event files in RUN_DIR/tensorboard, for `tensorboard --logdir`


@dataclass
class Config:
    preset: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    # What train.adapt changed for this run's data, and why (engine/recipe.py writes it; None:
    # nothing adapted). config.json keeps it beside the resolved values.
    recipe: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # The settings given by a user rather than a preset (flags, --set, a config file,
        # keyword arguments): train.adapt leaves them as given. Not a field: a saved config is
        # all resolved values, so it is neither saved nor compared.
        self.given: set[str] = set()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "track": TrackConfig}


# The CLI's parser reads this module at every start: what only presets and config files need is
# imported where they are read.


def preset_names() -> list[str]:
    from importlib import resources  # here, not above: keeps the CLI's start fast

    files = resources.files("cifar100.configs").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".toml"))


def load_preset(name: str) -> Config:
    """A named preset shipped with the package (configs/NAME.toml)."""
    import tomllib  # here, not above: keeps the CLI's start fast
    from importlib import resources

    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    text = resources.files("cifar100.configs").joinpath(f"{name}.toml").read_text()
    return from_dict(tomllib.loads(text), preset=name)


def load_config_file(path: str | Path) -> Config:
    raw = read_toml_file(path)
    base = load_preset(raw.pop("extends")) if "extends" in raw else Config()
    return merge(base, raw, origin=str(path))


def read_toml_file(path: str | Path, what: str = "config file", hint: str = "") -> dict[str, Any]:
    """A user's TOML file (`what`: a config file, a search space) as a dict; ConfigError, one
    line naming it, when it is not one (`hint`: an example to add to that line)."""
    import tomllib  # here, not above: keeps the CLI's start fast

    from cifar100.fileio import file_problem

    path = Path(path)
    problem = file_problem(path)  # before reading: a FIFO would block, /dev/zero never ends
    if problem:
        raise ConfigError(f"{path}: {problem}; a {what} is a TOML text file{hint}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; a {what} is TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}){hint}") from None


PRESET_ORIGIN = "preset "  # values a preset (or a saved run's config) gives: not the user's


def from_dict(raw: dict[str, Any], preset: str = "custom") -> Config:
    cfg = merge(Config(), raw, origin=f"{PRESET_ORIGIN}{preset}")
    if "preset" not in raw:
        cfg.preset = preset
    return cfg


def merge(cfg: Config, raw: dict[str, Any], origin: str) -> Config:
    """Apply a nested dict of values onto `cfg`, checking names and types."""
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: [{key}] must be a table")
            for sub, v in value.items():
                set_value(cfg, f"{key}.{sub}", v, origin)
        elif key in ("preset", "description"):
            setattr(cfg, key, str(value))
        elif key == "recipe":  # a saved run's record of what train.adapt changed
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{origin}: recipe must be a table")
            cfg.recipe = value
        else:
            raise ConfigError(f"{origin}: unknown key {key!r}")
    return cfg


def set_value(cfg: Config, dotted: str, value: Any, origin: str = "--set") -> None:
    """Set `section.name` to `value`, converting strings to the field's type."""
    section, _, name = dotted.partition(".")
    if section not in SECTIONS or not name:
        raise ConfigError(
            f"{origin}: {dotted!r} is not section.name (sections: {', '.join(SECTIONS)})"
        )
    obj = getattr(cfg, section)
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if name not in fields:
        raise ConfigError(
            f"{origin}: unknown setting {dotted!r}; {section} has: {', '.join(fields)}"
        )
    setattr(obj, name, _coerce(value, fields[name].type, dotted, origin))
    if not origin.startswith(PRESET_ORIGIN):
        cfg.given.add(dotted)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item!r}: expected section.name=value")
        set_value(cfg, key.strip(), value.strip(), "--set")
    return cfg


def setting_kind(dotted: str) -> tuple[str, bool]:
    """A setting's kind (str, int, float or bool) and whether it may be unset (None)."""
    section, _, name = dotted.partition(".")
    (f,) = [f for f in dataclasses.fields(SECTIONS[section]) if f.name == name]
    return _kind(f.type)


def _kind(type_name: Any) -> tuple[str, bool]:
    t = str(type_name)
    return t.split()[0].split("|")[0], "None" in t


def _coerce(value: Any, type_name: Any, dotted: str, origin: str) -> Any:
    kind, optional = _kind(type_name)
    if isinstance(value, str):
        # An empty value clears an optional setting. The words none/null do too, but only for
        # numbers: for a text setting "none" is a value of its own (model.preprocess=none is
        # x/255, not "as the weights expect"; a file may be called none), so it is kept as is.
        if optional and (value == "" or (kind != "str" and value.lower() in ("none", "null"))):
            return None
        try:
            if kind == "bool":
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if kind == "int":
                return int(value)
            if kind == "float":
                return float(value)
        except ValueError:
            raise ConfigError(f"{origin}: {dotted}={value!r}: expected {kind}") from None
        return value
    if value is None and optional:
        return None
    expected = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
    if (
        kind in expected
        and not isinstance(value, expected[kind])
        or (kind in ("int", "float") and isinstance(value, bool))
    ):
        raise ConfigError(f"{origin}: {dotted} must be {kind}, got {value!r}")
    return float(value) if kind == "float" else value


# The valid range of every numeric setting: (low, high, low included, high included); None is
# unbounded. validate() checks them all (NaN and infinities included) before anything is created,
# and a test checks that every numeric field of the dataclasses is listed here.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "data.image_size": (8, 1024, True, True),
    "data.val_fraction": (0, 1, True, False),
    "data.test_fraction": (0, 1, False, False),
    "data.limit_train": (1, None, True, True),
    "data.limit_test": (1, None, True, True),
    "model.resize": (1, 32, True, True),
    "model.head_units": (1, None, True, True),
    "model.dropout": (0, 1, True, False),
    "model.leaky_slope": (0, 1, True, False),
    "model.bn_momentum": (0, 1, True, False),
    "train.epochs": (1, None, True, True),
    "train.freeze_epochs": (0, None, True, True),
    "train.batch_size": (1, None, True, True),
    # 0 is allowed: only batch-norm statistics move (re-estimating them on new data)
    "train.head_lr": (0, None, True, True),
    "train.lr": (0, None, True, True),
    "train.momentum": (0, 1, True, False),
    "train.weight_decay": (0, None, True, True),
    "train.warmup_epochs": (0, None, True, True),
    "train.label_smoothing": (0, 1, True, False),
    "train.crop_padding": (0, None, True, True),
    "train.policy_magnitude": (0, 30, True, True),
    "train.policy_ops": (0, 30, True, True),  # drawn with replacement; more only erases the image
    "train.random_erasing": (0, 1, True, True),
    "train.mixup_alpha": (0, None, True, True),
    "train.cutmix_alpha": (0, None, True, True),
    "train.mix_prob": (0, 1, True, True),
    "train.backbone_lr_scale": (0, None, True, True),
    "train.accumulate": (1, None, True, True),
    "train.ema_decay": (0, 1, True, False),
    "train.clip_grad_norm": (0, None, True, True),
    "train.seed": (0, 2**32 - 1, True, True),  # numpy's generators take 32-bit seeds
    "train.eval_batch_size": (1, None, True, True),
    "train.log_every": (1, None, True, True),
    "train.checkpoint_minutes": (0, None, True, True),
    "train.early_stopping": (0, None, True, True),  # patience in epochs; 0 is off
    "train.ood_acceptance": (0, 1, False, True),
}


# The values of every text setting that has a fixed set of them, in the order they are offered.
# validate() checks them, the command line offers them (cli/), and tests check them against the
# code that acts on them (data.augment.POLICIES, models.head.PREPROCESS_MODES).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("cifar100", "cifar10", "folder"),
    "data.label": ("fine", "coarse"),
    "model.activation": ("relu", "leaky_relu"),
    "model.preprocess": ("tf", "torch", "none", "raw", "lite"),  # unset: as the weights expect
    "train.policy": ("none", "trivial", "randaugment"),
    "train.finetune_bn": ("batch", "frozen"),
    "train.final": ("best", "last"),
    "train.mode": ("finetune", "features"),
    "train.optimizer": ("sgd", "adam", "adamw"),
    "train.device": ("auto", "cuda", "mps", "cpu"),  # and cuda:N, one GPU by its number
}


def describe_choices(dotted: str) -> str:
    """A setting's choices in words, e.g. "fine or coarse"."""
    *rest, last = CHOICES[dotted]
    return f"{', '.join(rest)} or {last}" if rest else last


def _check_choice(cfg: Config, dotted: str) -> None:
    section, _, name = dotted.partition(".")
    value = getattr(getattr(cfg, section), name)
    if value in CHOICES[dotted] or (value is None and setting_kind(dotted)[1]):
        return
    if dotted == "train.device" and isinstance(value, str) and value.startswith("cuda:"):
        return
    raise ConfigError(f"{dotted}={value!r}: choose {describe_choices(dotted)}")


def describe_range(dotted: str) -> str:
    """The valid range of a numeric setting in words, e.g. "a number > 0" or "in [0, 1)"."""
    lo, hi, lo_in, hi_in = RANGES[dotted]
    if lo is not None and hi is not None:
        return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
    if lo is not None:
        return f"{'>=' if lo_in else '>'} {lo:g}"
    return f"{'<=' if hi_in else '<'} {hi:g}"


def in_range(value: float, dotted: str) -> bool:
    lo, hi, lo_in, hi_in = RANGES[dotted]
    if not math.isfinite(value):
        return False
    if lo is not None and (value < lo or (value == lo and not lo_in)):
        return False
    return hi is None or not (value > hi or (value == hi and not hi_in))


def _check_ranges(cfg: Config) -> None:
    for dotted in RANGES:
        section, _, name = dotted.partition(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and not in_range(value, dotted):
            raise ConfigError(f"{dotted}={value}: must be {describe_range(dotted)}")


def validate(cfg: Config) -> Config:
    """Check values that types alone cannot; one clear message per problem."""
    d, t = cfg.data, cfg.train
    _check_ranges(cfg)
    if t.freeze_epochs > t.epochs:
        raise ConfigError(
            f"train.freeze_epochs={t.freeze_epochs}: must not exceed train.epochs={t.epochs}"
        )
    if t.batch_size % t.accumulate:
        raise ConfigError(
            f"train.accumulate={t.accumulate}: must divide train.batch_size={t.batch_size}"
        )
    _check_choice(cfg, "data.dataset")
    if d.dataset == "folder" and not d.path:
        raise ConfigError("data.dataset=folder needs --data PATH (a folder or tarball)")
    for dotted in CHOICES:
        _check_choice(cfg, dotted)
    return cfg
