"""Config schema: YAML + overrides, typed validation with one-line errors, shipped configs load."""

from pathlib import Path

import pytest
import torch

from mvmr.config import PretrainConfig, describe_schema, load_config, save_config
from mvmr.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*_self_supervised.yaml"))


def test_defaults_and_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "dataset.size=48",
            "lr=3e-4",
            "encoder.small_kernel=true",
            "representations=[{name: hog, weight: -0.5, params: {nbins: 9}}]",
        ],
    )
    assert cfg.dataset.size == 48 and cfg.lr == pytest.approx(3e-4) and cfg.encoder.small_kernel is True
    assert cfg.representations[0].name == "hog" and cfg.representations[0].weight == -0.5
    assert cfg.representations[0].params == {"nbins": 9}


def test_yaml_scientific_notation_string_is_parsed_not_evaluated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\nwd: 1e-6\n")  # PyYAML reads these as strings
    cfg = load_config(path)
    assert cfg.lr == pytest.approx(1e-4) and cfg.wd == pytest.approx(1e-6)


def test_override_list_item_by_index(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("representations:\n  - {name: pixels}\n  - {name: hog}\n")
    cfg = load_config(path, ["representations.1.weight=2"])
    assert cfg.representations[1].weight == 2.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("foo=1", "unknown config key 'foo'"),
        ("dataset.nme=x", "unknown config key 'dataset.nme'"),
        ("optimizer=rmsprop", "optimizer: unknown optimizer 'rmsprop'; allowed: adam, adamw, lars, sgd"),
        ("batch_size=0", "batch_size must be >= 1"),
        ("batch_size=1.5", "batch_size must be an integer"),
        ("lr=fast", "lr must be a number"),
        ("fp16=maybe", "fp16 must be true or false"),
        ("encoder.out_dim=12-a", "encoder.out_dim must be positive integers"),
        ("warmup_epochs=500", "warmup_epochs (500) must be <= epochs"),
        ("dataset.aug_policy=mixup", "dataset.aug_policy: unknown aug_policy 'mixup'"),
        ("noequals", "--set expects key=value"),
    ],
)
def test_bad_values_give_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg


def test_paper_settings_in_stl10_config():
    cfg = load_config(Path(__file__).parents[2] / "configs" / "stl10_self_supervised.yaml")
    assert (cfg.batch_size, cfg.lr, cfg.wd, cfg.warmup_epochs, cfg.epochs) == (256, 1e-4, 1e-6, 10, 1000)
    assert cfg.encoder.out_dim == "8192-8192-8192" and cfg.encoder.small_kernel and cfg.dataset.size == 96
    assert (cfg.hog.nbins, cfg.hog.pool, cfg.scatnet.J, cfg.scatnet.L) == (24, 8, 2, 8)


def test_schema_reference_lists_every_key():
    keys = {row[0] for row in describe_schema(PretrainConfig)}
    assert {"batch_size", "dataset.name", "encoder.out_dim", "loss.unbiased", "trainer.devices"} <= keys


def test_config_reference_document_is_current():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "scripts/config_reference.py", "--check"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["batch_size=1"], r"batch_size must be >= 2 for the MV-MR loss"),
        (["batch_size=3", "loss.unbiased=true"], r"batch_size must be >= 4 for the bias-corrected dCor"),
        (["trainer.max_epochs=3"], r"trainer.max_epochs: this project's key is 'epochs'"),
        (["trainer.log_every_n_steps=3"], r"this project's key is 'log_every'"),
        (["trainer.callbacks=[]"], r"trainer.callbacks is set by mvmr"),
        (["trainer.benchmrk=true"], r"unknown config key 'trainer.benchmrk'; did you mean 'benchmark'\?"),
        (["dataset.sise=3"], r"unknown config key 'dataset.sise'; did you mean 'size'\?"),
        (["trainer.args={precision: 32-true}"], r"trainer.args.precision: use trainer.precision"),
    ],
)
def test_mistakes_are_refused_when_the_config_is_read(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Path(__file__).resolve().parents[2] / "configs" / "digits_self_supervised.yaml", overrides)


def test_lightning_trainer_arguments_pass_through():
    cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "digits_self_supervised.yaml",
        ["trainer.benchmark=true", "trainer.args={gradient_clip_algorithm: value}"],
    )
    assert cfg.trainer.args == {"gradient_clip_algorithm": "value", "benchmark": True}


def test_trainer_args_reach_the_lightning_trainer(tmp_path):
    from mvmr.training import RunDir, build_trainer

    cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "digits_self_supervised.yaml",
        ["trainer.val_check_interval=0.5", f"run_dir={tmp_path}"],
    )
    trainer = build_trainer(cfg, RunDir.for_config(cfg, None, "args"), monitor=None)
    assert trainer.val_check_interval == 0.5


@pytest.mark.parametrize(
    "overrides,expected",
    [([], True), (["deterministic=true"], False), (["trainer.args={benchmark: false}"], False)],
)
def test_cudnn_autotuner_is_on_unless_deterministic_or_turned_off(tmp_path, overrides, expected):
    """Fixed-size inputs: cuDNN's autotuner finds the fastest convolutions once (Lightning sets the flag)."""
    from mvmr.training import RunDir, build_trainer

    cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "digits_self_supervised.yaml",
        [f"run_dir={tmp_path}", *overrides],
    )
    previous = torch.backends.cudnn.benchmark
    try:
        build_trainer(cfg, RunDir.for_config(cfg, None, "bench"), monitor=None)
        assert torch.backends.cudnn.benchmark is expected
    finally:
        torch.backends.cudnn.benchmark = previous


def test_the_seeds_top_level_loss_keys_read_as_loss_keys(tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text("std_margin: 2.5\nnormalize_z: true\nrepresentations: []\n")
    cfg = load_config(path)
    assert cfg.loss.std_margin == 2.5 and cfg.loss.normalize_z is True
    path.write_text("std_margin: 2.5\nloss: {std_margin: 1.0}\nrepresentations: []\n")
    with pytest.raises(ConfigError, match=r"std_margin \(2.5\) and loss.std_margin \(1.0\) disagree"):
        load_config(path)


def test_representation_terms_are_resolved_in_one_place_with_every_default():
    from mvmr.data import DatasetInfo
    from mvmr.representations.terms import resolve_terms

    cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "stl10_clip_self_supervised.yaml",
        [
            "representations=[{name: hog, weight: -1.0}, {name: hog, params: {pool: 4}, power: 0.5}, "
            "{name: teacher, params: {kind: open_clip}, standardize: true, statistic: dcov}]",
            "hog.nbins=12",
        ],
    )
    specs = resolve_terms(cfg, DatasetInfo(10, 3, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)))
    assert [s.key for s in specs] == ["hog_0", "hog_1", "teacher"]
    assert specs[0].params == {"nbins": 12, "pool": 8} and specs[0].weight == -1.0
    assert specs[1].params == {"nbins": 12, "pool": 4} and specs[1].power == 0.5
    assert specs[2].params == {
        "kind": "open_clip",
        "model_name": "ViT-B-16",
        "pretrained": "laion400m_e32",
        "dataset_mean": [0.1, 0.2, 0.3],
        "dataset_std": [0.4, 0.5, 0.6],
    }
    assert specs[2].standardize and specs[2].statistic == "dcov"


def test_registry_names_are_the_schema_choices_with_no_copy_to_edit():
    """A name registered in a registry is accepted by the config and listed in its help, with no list to edit in
    config.py; an unknown one is refused before any work, with the registered names and the closest one."""
    from mvmr.config import ConfigError
    from mvmr.data.datasets import DATASETS
    from mvmr.methods.optim import OPTIMIZERS

    DATASETS.register("my_new_dataset")(lambda cfg, split: None)
    try:
        cfg = load_config(None, ["dataset.name=my_new_dataset"])
        assert cfg.dataset.name == "my_new_dataset"
        helps = {row[0]: row[3] for row in describe_schema(PretrainConfig)}
        assert "my_new_dataset" in helps["dataset.name"]
        assert all(name in helps["optimizer"] for name in OPTIMIZERS.names())
    finally:
        del DATASETS._items["my_new_dataset"]
    with pytest.raises(ConfigError, match=r"dataset.name: unknown dataset 'my_new_datset'.*allowed: .*fashion_mnist"):
        load_config(None, ["dataset.name=my_new_datset"])
    with pytest.raises(
        ConfigError,
        match=r"representations\[0\].name: unknown representation 'scatnett'; "
        r"did you mean 'scatnet'\?",
    ):
        load_config(None, ["representations=[{name: scatnett}]"])
