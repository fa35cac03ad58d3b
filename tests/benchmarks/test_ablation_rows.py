"""benchmarks/ablation.py builds its rows from the config's representations without dropping any key."""

from pathlib import Path

from conftest import load_benchmark

from mvmr.config import SemiSupervisedConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRETRAIN = CONFIGS / "fashion_mnist_self_supervised.yaml"
FINE_TUNE = CONFIGS / "fashion_mnist_semi_supervised.yaml"


def test_rows_keep_weights_params_standardize_and_power():
    cfg = load_config(
        None,
        [
            "representations=[{name: hog, weight: 6.0, standardize: true, power: 0.25, params: {nbins: 9, pool: 4}}, "
            "{name: pixels, weight: 3.0}]"
        ],
    )
    rows = dict(load_benchmark("ablation").representation_rows(cfg))
    for name, value in rows.items():  # every row is a valid `representations` override
        load_config(None, [f"representations={value}"])
    hog_only = load_config(None, [f"representations={rows['hog only']}"]).representations
    assert [(r.name, r.weight, r.standardize, r.power, r.params) for r in hog_only] == [
        ("hog", 6.0, True, 0.25, {"nbins": 9, "pool": 4})
    ]
    signed = [v for k, v in rows.items() if k.startswith("all, authors' sign")]
    reps = load_config(None, [f"representations={signed[0]}"]).representations
    assert [(r.weight, r.standardize, r.power) for r in reps] == [(-6.0, True, 0.25), (-3.0, False, 1.0)]
    assert rows["no representation terms"] == "[]"
    assert not any("|" in name for name in rows)  # row names go into Markdown table cells


def test_supervised_row_trains_from_scratch_with_the_pretraining_recipe():
    """The supervised reference is the fine-tuning config overridden with the pretraining rows' recipe (the
    fine-tuning defaults, lr 1e-4 and no warm-up, under-train a random encoder)."""
    pretrain = load_config(PRETRAIN)
    fine_tune = load_config(FINE_TUNE, schema=SemiSupervisedConfig)
    assert (fine_tune.lr, fine_tune.batch_size) != (pretrain.lr, pretrain.batch_size)  # else the test proves nothing
    recipe = load_benchmark("ablation").supervised_recipe(pretrain, 5)
    cfg = load_config(FINE_TUNE, ["epochs=2"] + recipe, schema=SemiSupervisedConfig)  # the recipe comes last and wins
    assert (cfg.epochs, cfg.dataset.percentage, cfg.batch_size, cfg.optimizer) == (
        5,
        100,
        pretrain.batch_size,
        pretrain.optimizer,
    )
    assert cfg.lr == cfg.lr_head == pretrain.lr and cfg.wd == pretrain.wd
    assert (cfg.warmup_epochs, cfg.scheduler, cfg.dataset.aug_policy) == (
        1,
        pretrain.scheduler,
        pretrain.dataset.aug_policy,
    )
    assert load_benchmark("ablation").supervised_recipe(pretrain, 1)[-1] == "name=abl_supervised"
    assert "warmup_epochs=0" in load_benchmark("ablation").supervised_recipe(pretrain, 1)  # warm-up < epochs


def test_supervised_row_gets_the_whole_augmentation_of_the_pretraining_config():
    """Not just the policy's name: its crop range, strength and erasing too (they change the x' view)."""
    recipe = load_benchmark("ablation").supervised_recipe
    for extra in (
        ["dataset.aug_policy=crop", "dataset.crop_scale=[0.5,0.9]", "dataset.aug_strength=0.5", "dataset.erase_p=0.25"],
        ["dataset.aug_policy=custom", "dataset.crop_scale=null"],
    ):
        pretrain = load_config(PRETRAIN, extra)
        cfg = load_config(
            FINE_TUNE,
            ["dataset.crop_scale=[0.3,0.4]", "dataset.erase_p=0.5"] + recipe(pretrain, 3),
            schema=SemiSupervisedConfig,
        )
        got, want = cfg.dataset, pretrain.dataset
        assert (got.aug_policy, got.crop_scale, got.aug_strength, got.erase_p) == (
            want.aug_policy,
            want.crop_scale,
            want.aug_strength,
            want.erase_p,
        )
