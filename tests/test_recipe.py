"""train.adapt fits the fine-tuning recipe to the number of training images (engine/recipe.py),
says so and records it; train.final tests (and evaluate, export and load take) the best
validated weights unless the last are asked for."""

from __future__ import annotations

import json

import pytest

from cifar100 import cli
from cifar100.api import make_config
from cifar100.config import Config, apply_overrides, from_dict, load_preset, set_value
from cifar100.engine import epoch_end
from cifar100.engine.recipe import ADAPTED, REFERENCE_IMAGES, adapt, rule, show
from cifar100.report import build_report
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.trained_model import load
from synthetic_cifar import make_cifar10_archive

PRESETS = ["cpu-finetune", "seed", "best", "fast"]  # the fine-tuning presets


def _value(cfg: Config, dotted: str):
    section, _, name = dotted.partition(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("preset", PRESETS)
def test_at_the_tuned_size_and_above_the_preset_stands(preset):
    for images in (REFERENCE_IMAGES, 50_000, 1_000_000):
        cfg = load_preset(preset)
        recipe = adapt(cfg, images, 100)
        assert recipe is not None and recipe.changed == {} and recipe.kept == {}
        assert cfg.train == load_preset(preset).train
        assert "the preset's, unchanged" in recipe.lines()[0]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("images", [300, 900, 4_500, 22_500, 44_000])
def test_below_it_the_rule_changes_the_preset_and_says_so(preset, images):
    cfg = load_preset(preset)
    recipe = adapt(cfg, images, 10)
    assert recipe.changed, "a smaller data set changes the recipe"
    for dotted, (before, after) in recipe.changed.items():
        assert dotted in ADAPTED
        assert before == _value(load_preset(preset), dotted) and after == _value(cfg, dotted)
    # Every adapted value is a valid setting, and the rate falls with the data.
    from cifar100.config import validate

    validate(cfg)
    assert 0 < cfg.train.lr < load_preset(preset).train.lr
    assert cfg.train.finetune_bn == "frozen"
    # Recorded as config.json keeps it, and said in lines naming each value.
    assert cfg.recipe == recipe.to_json()
    assert cfg.recipe["train_images"] == images and cfg.recipe["classes"] == 10
    said = "\n".join(recipe.lines())
    assert f"{images:,} training images in 10 classes" in said
    for dotted in recipe.changed:
        assert f"  {dotted} = " in said


def test_the_rate_falls_with_the_images_and_with_batch_norm_frozen():
    images = (900, 4_500, 22_500)
    lite = [rule(load_preset("cpu-finetune"), n, 10)["train.lr"] for n in images]
    # cpu-finetune fine-tunes with frozen batch norm at lr 0.006: the rate alone scales
    assert lite == pytest.approx([0.006 * (n / 45_000) ** 0.55 for n in images], rel=2e-3)
    # seed fine-tunes with batch statistics at 0.01: frozen below 45,000, at 0.3 of the rate
    seed = [rule(load_preset("seed"), n, 10)["train.lr"] for n in images]
    assert seed == pytest.approx([0.003 * (n / 45_000) ** 0.55 for n in images], rel=2e-3)


def test_settings_the_user_gives_are_kept_however_given(tmp_path):
    given = [
        apply_overrides(load_preset("cpu-finetune"), ["train.lr=0.05"]),  # --set
        make_config(preset="cpu-finetune", lr=0.05),  # keyword
    ]
    direct = load_preset("cpu-finetune")
    direct.train.lr = 0.05  # a Config changed in Python: differs from its preset
    file = tmp_path / "mine.toml"
    file.write_text('extends = "cpu-finetune"\n[train]\nlr = 0.05\n')
    from cifar100.config import load_config_file

    for cfg in [*given, direct, load_config_file(file)]:
        recipe = adapt(cfg, 900, 10)
        assert cfg.train.lr == 0.05 and recipe.kept == {"train.lr": 0.05}
        assert "train.lr" not in recipe.changed and cfg.train.finetune_bn == "frozen"
        assert "train.lr = 0.05 (as you set it)" in "\n".join(recipe.lines())
    # Given by name: kept, and so is a value equal to the preset's.
    for mode in ("batch", "frozen"):
        cfg = apply_overrides(load_preset("cpu-finetune"), [f"train.finetune_bn={mode}"])
        assert adapt(cfg, 900, 10).kept == {"train.finetune_bn": mode}


def test_where_the_rule_does_not_apply_nothing_changes():
    off = apply_overrides(load_preset("cpu-finetune"), ["train.adapt=false"])
    scratch = load_preset("scratch")  # no pretrained backbone: no transfer to adapt
    features = load_preset("cpu")  # a head on cached features: not fine-tuning
    for cfg in (off, scratch, features):
        before = cfg.to_dict()
        assert adapt(cfg, 900, 10) is None and cfg.to_dict() == before and cfg.recipe is None


def test_the_record_survives_the_run_config_and_the_given_set_does_not():
    cfg = load_preset("cpu-finetune")
    set_value(cfg, "train.epochs", "3", "--set")
    adapt(cfg, 900, 10)
    raw = json.loads(json.dumps(cfg.to_dict()))  # as config.json holds it
    assert "given" not in raw and raw["recipe"]["changed"]["train.lr"]["adapted"] == cfg.train.lr
    again = from_dict(raw, preset="cpu-finetune")
    assert again.recipe == cfg.recipe and again.given == set() and again.train == cfg.train


class _Validation:
    """Validation top-1 as given per epoch (the first improves, a later one falls)."""

    def __init__(self, monkeypatch, top1s: list[float]) -> None:
        self.top1s, real = list(top1s), epoch_end.accuracy

        def accuracy(logits, labels):
            out = real(logits, labels)
            return {**out, "top1": self.top1s.pop(0)}

        monkeypatch.setattr(epoch_end, "accuracy", accuracy)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_cifar10_archive(tmp_path_factory.mktemp("c10") / "c10.tar.gz", 60, 40)


def _train(tmp_path, archive, *extra: str) -> list[str]:
    run = tmp_path / "run"
    argv = ["train", "--preset", "cpu-finetune", "--dataset", "cifar10", "--data", str(archive),
            "--set", "model.resize=1", "--set", "train.batch_size=16", "--no-progress",
            "--out", str(run), "--cache-dir", str(tmp_path.parent / "cache"), *extra]  # fmt: skip
    assert cli.main(argv) == 0
    return run


def test_a_small_data_run_says_its_recipe_and_ends_on_its_best_validated_weights(
    tmp_path, archive, monkeypatch, capsys
):
    _Validation(monkeypatch, [0.6, 0.4, 0.5])  # epoch 1 is the best
    run = _train(tmp_path, archive, "--epochs", "3")
    out = capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    recipe = config["recipe"]
    assert recipe["train_images"] == 50 and recipe["classes"] == 10  # 60 less the validation
    # Printed at the start, as recorded: each adapted value is the run's resolved setting.
    assert "recipe for 50 training images in 10 classes" in out
    for dotted, change in recipe["changed"].items():
        section, _, name = dotted.partition(".")
        assert config[section][name] == change["adapted"]
        assert f"  {dotted} = {show(change['adapted'])} (preset: {show(change['preset'])})" in out
    assert recipe["kept_as_given"] == {"train.epochs": 3} or "train.epochs" not in recipe["changed"]
    assert config["train"]["finetune_bn"] == "frozen" and config["train"]["lr"] < 0.006
    # The final test is of best.pt (epoch 1), not of the worse last epoch.
    evaluation = Evaluation.read(run / "evaluation.json")
    assert evaluation.checkpoint.endswith("best.pt") and evaluation.epoch == 1
    assert evaluation.final["weights"] == "best" and evaluation.final["of_epochs"] == 3
    assert "testing the best validated weights, epoch 1 of 3" in out
    # What load, evaluate and export take from the run by default: those same weights.
    assert load(run).source.name == "best.pt"
    assert load(run).info.test_top1 == evaluation.top1
    assert load(run, checkpoint="last").source.name == "last.pt"
    assert cli.main(["evaluate", str(run), "--no-progress"]) == 0
    again = Evaluation.read(run / "evaluation.json")
    assert again.top1 == evaluation.top1 and again.checkpoint.endswith("best.pt")
    assert cli.main(["evaluate", str(run), "--checkpoint", "last", "--no-progress"]) == 0
    assert Evaluation.read(run / "evaluation-last.json").checkpoint.endswith("last.pt")
    assert cli.main(["export", str(run), "--format", "safetensors"]) == 0
    exported = load(next(run.glob("*.safetensors")))
    assert exported.info.epoch == 1
    page = build_report(run, plots=False).read_text()
    assert "tested on the best validated weights: epoch 1 of 3" in page
    assert "last checkpoint" in page  # the evaluation of last.pt, beside the run's own


def test_final_last_tests_the_last_weights(tmp_path, archive, monkeypatch, capsys):
    _Validation(monkeypatch, [0.6, 0.4])
    run = _train(tmp_path, archive, "--epochs", "2", "--final", "last")
    evaluation = Evaluation.read(run / "evaluation.json")
    assert evaluation.checkpoint.endswith("last.pt") and evaluation.epoch == 2
    assert evaluation.final == {"weights": "last", "epoch": 2, "of_epochs": 2, "setting": "last"}
    assert load(run).source.name == "last.pt"
    assert "testing the best" not in capsys.readouterr().out
    assert "epoch 2: as asked (--final last)" in build_report(run, plots=False).read_text()


@pytest.mark.parametrize("given", ["train.epochs=5", "train.freeze_epochs=2"])
def test_a_run_length_you_give_stays_yours(given):
    cfg = apply_overrides(load_preset("cpu-finetune"), [given])
    recipe = adapt(cfg, 4_500, 10)
    dotted, value = given.split("=")
    assert recipe.kept == {dotted: int(value)}
    assert "train.epochs" not in recipe.changed and "train.freeze_epochs" not in recipe.changed
    assert cfg.train.lr == 0.00169 and cfg.train.finetune_bn == "frozen"


def test_the_best_preset_keeps_its_average_over_the_same_share_of_fine_tuning():
    cfg = load_preset("best")
    adapt(cfg, 4_500, 100)
    assert cfg.train.ema_decay == pytest.approx(0.998)  # memory 5,000 steps -> 500
    for preset in ("seed", "fast", "cpu-finetune"):  # no average: none made
        assert "train.ema_decay" not in adapt(load_preset(preset), 4_500, 100).changed
