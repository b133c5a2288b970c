import dataclasses
import json

import pytest

from cifar100.config import (
    CHOICES,
    RANGES,
    SECTIONS,
    Config,
    DataConfig,
    apply_overrides,
    describe_choices,
    from_dict,
    load_config_file,
    load_preset,
    preset_names,
    validate,
)
from cifar100.errors import ConfigError


def test_presets_load_and_validate():
    assert {"seed", "scratch", "cpu"} <= set(preset_names())
    for name in preset_names():
        cfg = validate(load_preset(name))
        assert cfg.preset == name and cfg.description


def test_seed_preset_is_the_report_model():
    m = load_preset("seed").model
    assert (m.backbone, m.weights, m.resize, m.head_units, m.dropout, m.activation) == (
        "resnet50v2",
        "imagenet",
        7,
        256,
        0.25,
        "relu",
    )
    assert m.leaky_slope == 0.01


def test_overrides_convert_types():
    cfg = apply_overrides(
        Config(),
        [
            "train.lr=3e-4",
            "train.nesterov=false",
            "data.limit_train=100",
            "model.activation=leaky_relu",
            "data.path=",
            "data.limit_test=none",
        ],
    )
    assert cfg.train.lr == 3e-4 and cfg.train.nesterov is False
    assert cfg.data.limit_train == 100 and cfg.model.activation == "leaky_relu"
    # An empty value clears an optional setting; "none" does too where it cannot be a value.
    assert cfg.data.path is None and cfg.data.limit_test is None


@pytest.mark.parametrize(
    "item, words",
    [
        ("train.lr", "section.name=value"),
        ("train.nope=1", "unknown setting"),
        ("bogus.lr=1", "not section.name"),
        ("train.epochs=many", "expected int"),
        ("train.flip=maybe", "expected bool"),
    ],
)
def test_bad_overrides_say_what_is_wrong(item, words):
    with pytest.raises(ConfigError, match=words):
        apply_overrides(Config(), [item])


def test_validate_rejects_inconsistent_values():
    cfg = apply_overrides(Config(), ["train.freeze_epochs=20", "train.epochs=3"])
    with pytest.raises(ConfigError, match="freeze_epochs"):
        validate(cfg)
    with pytest.raises(ConfigError, match="needs --data"):
        validate(apply_overrides(Config(), ["data.dataset=folder"]))


def test_config_file_extends_a_preset(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('extends = "seed"\n[train]\nepochs = 3\n[model]\nactivation = "leaky_relu"\n')
    cfg = load_config_file(f)
    assert cfg.train.epochs == 3 and cfg.model.activation == "leaky_relu"
    assert cfg.model.resize == 7  # inherited
    f.write_text("[train]\nepochs = 'three'\n")
    with pytest.raises(ConfigError, match="expected int"):
        load_config_file(f)
    f.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(f)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("nope")


def _fields(kinds: tuple[str, ...]) -> list[str]:
    """section.name of every setting whose type is one of `kinds` (str, int, float, bool)."""
    return [
        f"{section}.{f.name}"
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if str(f.type).split()[0].split("|")[0] in kinds
    ]


@pytest.mark.parametrize("dotted", _fields(("str",)))
def test_the_word_none_round_trips_through_every_text_setting(dotted, tmp_path):
    """`none` is a value of its own (model.preprocess=none is x/255), never "unset"."""
    section, name = dotted.split(".")
    cfg = apply_overrides(Config(), [f"{dotted}=none"])
    assert getattr(getattr(cfg, section), name) == "none"
    # config.json, as a run directory and every checkpoint keep it
    again = from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert getattr(getattr(again, section), name) == "none"
    # a TOML config file
    f = tmp_path / "c.toml"
    f.write_text(f'[{section}]\n{name} = "none"\n')
    assert getattr(getattr(load_config_file(f), section), name) == "none"


def test_preprocess_none_survives_a_checkpoint_into_the_loaded_model(tmp_path):
    import cifar100
    from cifar100.models.registry import build_model
    from cifar100.runtime.checkpoint import save_checkpoint

    cfg = apply_overrides(
        Config(),
        ["model.backbone=efficientnet_lite0", "model.weights=none", "model.preprocess=none"],
    )
    save_checkpoint(
        {
            "config": json.loads(json.dumps(cfg.to_dict())),
            "classes": ["a", "b"],
            "model": build_model(cfg.model, num_classes=2).state_dict(),
        },
        tmp_path / "m.pt",
    )
    model = cifar100.load(tmp_path / "m.pt", device="cpu")
    assert model.preprocessing == "none" and model.module.preprocess.mode == "none"


NUMERIC = _fields(("int", "float"))


def test_every_numeric_setting_has_a_range():
    assert sorted(NUMERIC) == sorted(RANGES)


@pytest.mark.parametrize("dotted", NUMERIC)
def test_every_numeric_setting_refuses_values_outside_its_range(dotted):
    lo, hi, lo_in, hi_in = RANGES[dotted]
    bad = ["-1", "nan", "inf"] if dotted.endswith(FLOAT_NAMES) else ["-1"]
    if hi is not None:
        bad.append(str(hi if not hi_in else hi + 1))
    if lo is not None and not lo_in:
        bad.append(str(lo))
    for value in bad:
        cfg = apply_overrides(Config(), [f"{dotted}={value}"])
        with pytest.raises(ConfigError, match=dotted.replace(".", r"\.")) as e:
            validate(cfg)
        assert "must be" in str(e.value)


FLOAT_NAMES = tuple(d.split(".")[1] for d in _fields(("float",)))


def test_a_bad_learning_rate_is_refused_before_a_run_directory_exists(tmp_path):
    from cifar100.cli import main

    out = tmp_path / "run"
    assert main(["train", "--set", "train.lr=-0.1", "--out", str(out)]) == 2
    assert not out.exists()
    assert main(["train", "--set", "data.limit_train=0", "--out", str(out)]) == 2
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "RUN", "--batch-size", "0"],
        ["evaluate", "RUN", "--batch-size", "-5"],
        ["predict", "RUN", "x.jpg", "-k", "0"],
        ["bench", "--steps", "0"],
        ["bench", "--warmup", "-1"],
        ["bench", "--size", "2"],
        ["data", "--image-size", "0"],
        ["cache", "clear", "--max-gb", "-1"],
        ["cache", "clear", "--older-than", "nan"],
        ["summary", "--classes", "0"],
    ],
)
def test_numeric_flags_are_checked_by_the_parser(argv, capsys):
    from cifar100.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "must be" in capsys.readouterr().err


# no fixed choices
FREE_TEXT = ["data.path", "data.exclude", "model.backbone", "model.weights", "model.init",
             "track.mlflow", "track.experiment"]  # fmt: skip


def test_every_text_setting_has_choices_or_is_free_text():
    assert sorted(_fields(("str",))) == sorted([*CHOICES, *FREE_TEXT])


def test_the_choices_are_those_the_code_acts_on():
    """Every listed policy and preprocessing mode runs (the code reads its lists from CHOICES,
    so a choice added there without its code fails here)."""
    import torch

    from cifar100.data.augment import augment_batch
    from cifar100.models.head import Preprocess

    images = torch.rand(2, 3, 8, 8) * 255
    for policy in CHOICES["train.policy"]:
        out = augment_batch(images, 1, True, torch.Generator().manual_seed(0), policy=policy)
        assert out.shape == images.shape
    scaled = [Preprocess(mode)(images) for mode in CHOICES["model.preprocess"]]
    # each its own scaling (a mode without its code would fall through to another's)
    assert all(not torch.equal(a, b) for i, a in enumerate(scaled) for b in scaled[i + 1 :])


@pytest.mark.parametrize("dotted", list(CHOICES))
def test_validate_takes_each_choice_and_refuses_others(dotted):
    for choice in CHOICES[dotted]:
        validate(apply_overrides(Config(), [f"{dotted}={choice}", "data.path=x"]))
    with pytest.raises(ConfigError) as e:
        validate(apply_overrides(Config(), [f"{dotted}=bogus", "data.path=x"]))
    assert str(e.value) == f"{dotted}='bogus': choose {describe_choices(dotted)}"
    assert all(c in str(e.value) for c in CHOICES[dotted])


def test_unset_and_numbered_values_where_they_are_allowed():
    validate(apply_overrides(Config(), ["model.preprocess=", "train.device=cuda:1"]))
    with pytest.raises(ConfigError, match="choose"):
        validate(apply_overrides(Config(), ["train.device=tpu:1"]))


@pytest.mark.parametrize(
    "dataset, label, classes, size",
    [("cifar100", "fine", 100, 32), ("cifar100", "coarse", 20, 32), ("cifar10", "fine", 10, 32),
     ("folder", "fine", None, 64)],
)  # fmt: skip
def test_the_data_settings_know_their_class_count_and_image_size(dataset, label, classes, size):
    data = DataConfig(dataset=dataset, label=label, image_size=64)
    assert (data.class_count(), data.decoded_size()) == (classes, size)
