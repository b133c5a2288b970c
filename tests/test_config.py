import pytest

from cifar100.config import (
    Config,
    apply_overrides,
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
            "data.path=none",
        ],
    )
    assert cfg.train.lr == 3e-4 and cfg.train.nesterov is False
    assert cfg.data.limit_train == 100 and cfg.model.activation == "leaky_relu"
    assert cfg.data.path is None


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
