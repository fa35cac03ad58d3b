"""The seed-named configs are the authors' runs, value for value, and the authors' own files resolve to the same.

``AUTHORS_FILES`` holds the authors' config files as data (their keys and values, vkinakh/mv-mr ``configs/``);
``CODE_FIXED`` what their modules fix in code, each value with the file it comes from. Every seed-named config
of this project must resolve to those values, and a file in their format must resolve to the same run: a drift
in either fails here.
"""

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from mvmr.config import PretrainConfig, SemiSupervisedConfig, VOCConfig, load_config, to_dict

REPO = "vkinakh/mv-mr"
SS_MODULE = f"{REPO} src/model/self_supervised_module.py"
CLIP_MODULE = f"{REPO} src/model/clip_self_supervised_module.py"
SEMI_MODULE = f"{REPO} src/model/semi_supervised_module.py"
RESNET = f"{REPO} src/model/resnet.py"
TRANSFORM = f"{REPO} src/transform/transform.py"
MAIN = f"{REPO} main_self_supervised.py"

_SHARED = dict(
    warmup_epochs=10,
    log_every=100,
    eval_every=1,
    n_workers=16,
    fp16=True,
    accumulate_grad_batches=1,
    normalize_z=False,
    fine_tune_from=None,
    std_margin=1,
    optimizer="adam",
    wd="1e-6",
    lr="1e-4",
)
_SS = dict(
    _SHARED, batch_size=256, epochs=1000, scheduler="warmup_cosine", encoder_type="resnet", hog={"nbins": 24, "pool": 8}
)
_CLIP = dict(
    _SHARED,
    batch_size=256,
    epochs=200,
    encoder_type="resnet",
    clip={"model_name": "ViT-B-16", "pretrained": "laion400m_e32"},
)
# Their config files: {our seed-named config: (their file, protocol, its contents)}
AUTHORS_FILES = {
    "stl10_self_supervised": (
        "configs/stl10_self_supervised.yaml",
        "self_supervised",
        dict(
            _SS,
            dataset={"name": "stl10", "size": 96, "n_classes": 10, "path": None, "aug_policy": "custom"},
            scatnet={"J": 2, "shape": [96, 96], "L": 8},
            encoder={"out_dim": "8192-8192-8192", "small_kernel": True},
            comment="stl10_self_supervised_scale_z",
        ),
    ),
    "imagenet_self_supervised": (
        "configs/imagenet_self_supervised.yaml",
        "self_supervised",
        dict(
            _SS,
            accumulate_grad_batches=8,
            dataset={"name": "imagenet", "n_classes": 1000, "size": 224, "path": "<>", "aug_policy": "custom"},
            scatnet={"J": 2, "shape": [224, 224], "L": 8},
            encoder={"out_dim": "8192-8192-8192"},
            comment="imagenet_self_supervised_scale_z",
        ),
    ),
    "cifar20_self_supervised": (
        "configs/cifar20_self_supervsised.yaml",
        "self_supervised",
        dict(
            _SS,
            batch_size=512,
            lr="2e-4",
            dataset={"name": "cifar20", "size": 32, "n_classes": 20, "path": None, "aug_policy": "cifar20"},
            scatnet={"J": 2, "shape": [32, 32], "L": 8},
            encoder={"out_dim": "8192-8192-8192", "small_kernel": True},
            comment="cifar20_self_supervised_scale_z",
        ),
    ),
    "stl10_clip_self_supervised": (
        "configs/stl10_clip_self_supervised.yaml",
        "distillation",
        dict(
            _CLIP,
            dataset={"name": "stl10", "size": 96, "n_classes": 10, "path": None, "aug_policy": "custom"},
            encoder={"out_dim": "8192-8192-8192", "small_kernel": False},
            comment="stl10_clip_self_supervised_scale_z_VIT-B-16",
        ),
    ),
    "imagenet_clip_self_supervised": (
        "configs/imagenet_clip_self_supervised.yaml",
        "distillation",
        dict(
            _CLIP,
            dataset={"name": "imagenet", "n_classes": 1000, "size": 224, "path": "<>", "aug_policy": "custom"},
            encoder={"out_dim": "8192-8192-8192", "small_kernel": False},
            comment="imagenet_clip_self_supervised_scale_z_VIT-B-16",
        ),
    ),
    "cifar100_clip_self_supervised": (
        "configs/cifar100_clip_self_supervised.yaml",
        "distillation",
        dict(
            _CLIP,
            dataset={"name": "cifar100", "size": 32, "n_classes": 100, "path": None, "aug_policy": "cifar"},
            encoder={"out_dim": "8192-8192-8192", "small_kernel": True},
            comment="cifar100_clip_self_supervised_scale_z_VIT-B-16",
        ),
    ),
    "imagenet_semi_supervised": (
        "configs/imagenet_semi_supervised.yaml",
        "semi_supervised",
        dict(
            batch_size=256,
            epochs=100,
            eval_every=1,
            n_workers=16,
            fp16=True,
            accumulate_grad_batches=1,
            fine_tune_from=None,
            wd="1e-6",
            lr="1e-4",
            num_features=2048,
            dataset={"name": "imagenet", "n_classes": 1000, "size": 224, "path": "<>", "percentage": 10},
            encoder={"out_dim": "8192-8192-8192"},
            comment="imagenet_semi_supervised_0.10",
        ),
    ),
    "imagenet_voc": (
        "configs/imagenet_voc.yaml",
        "voc",
        dict(
            batch_size=256,
            epochs=100,
            eval_every=1,
            n_workers=16,
            fp16=True,
            accumulate_grad_batches=1,
            num_classes=20,
            dataset={"name": "voc", "n_classes": 20},
            fine_tune_from=None,
            wd="1e-6",
            lr="1e-4",
            encoder={"out_dim": "8192-8192-8192"},
            comment="imagenet_voc",
        ),
    ),
}

IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CIFAR_STATS = ([0.491, 0.482, 0.447], [0.247, 0.243, 0.261])
STATS = {"stl10": IMAGENET_STATS, "imagenet": IMAGENET_STATS, "cifar20": CIFAR_STATS, "cifar100": CIFAR_STATS}
FIVE = [
    ("pixels", -1.0, {}),
    ("scatnet", -1.0, {}),
    ("augmented_pixels", -1.0, {"policy": "authors"}),
    ("hog", -1.0, {}),
    ("local_std", -1.0, {}),
]
# What their code fixes: {dotted key: (value, where)}
_PRETRAIN_CODE = {
    "encoder.backbone": ("resnet50", f"{RESNET}: ResnetMultiProj(backbone='resnet50')"),
    "encoder.maxpool": (True, f"{RESNET}: small_kernel replaces conv1 only"),
    "encoder.projector_last_bias": (False, f"{RESNET}: nn.Linear(..., bias=False)"),
    "encoder.zero_init_residual": (True, f"{RESNET}: resnet50(zero_init_residual=True)"),
    "encoder.pool_grid": (1, f"{RESNET}: torchvision's global average pooling"),
    "encoder.width": (64, f"{RESNET}: torchvision's resnet50"),
    "probe.enabled": (True, f"{MAIN}: OnlineFineTuner"),
    "probe.source": ("labelled", f"{SS_MODULE}: OnlineFineTuner.on_train_batch_end, next(labelled loader)"),
    "probe.lr": (1e-4, f"{SS_MODULE}: OnlineFineTuner, Adam(lr=1e-4)"),
    "probe.scheduled": (False, f"{SS_MODULE}: OnlineFineTuner's own optimiser"),
    "wd_norm_and_bias": (True, f"{SS_MODULE}: Adam(self._encoder.parameters(), weight_decay=wd)"),
    "schedule_epoch": ("single_device", f"{SS_MODULE}: epochs * len(self.train_dataloader())"),
    "loss.gather": (False, f"{SS_MODULE}: the loss of each process's batch"),
    "loss.mse_weight": (1.0, f"{SS_MODULE}: loss = loss_mse + loss_std + loss_dc_zz"),
    "loss.std_weight": (1.0, f"{SS_MODULE}: step"),
    "loss.dcor_weight": (1.0, f"{SS_MODULE}: step"),
    "loss.statistic": ("dcor", f"{REPO} src/loss/distance_correlation.py"),
    "loss.unbiased": (False, f"{REPO} src/loss/distance_correlation.py: the V-statistic"),
    "trainer.devices": ("auto", f"{MAIN}: pl.Trainer(gpus=-1)"),
    "momentum": (0.9, "unused by adam"),
    "seed": (0, f"{SS_MODULE}: torch.manual_seed(0)"),
}
CODE_FIXED = {
    "self_supervised": {
        **_PRETRAIN_CODE,
        "min_lr": (1e-6, f"{SS_MODULE}: CosineAnnealingWarmupRestarts(min_lr=1e-6)"),
        "representations": (FIVE, f"{SS_MODULE}: step, loss += dCor(feat, z)"),
    },
    "distillation": {
        **_PRETRAIN_CODE,
        "scheduler": ("authors_clip", f"{CLIP_MODULE}: configure_optimizers + step"),
        "representations": ([("teacher", 1.0, {"kind": "open_clip"})], f"{CLIP_MODULE}: loss += 1 - dCor(z, clip(x̄))"),
    },
    "semi_supervised": {
        "optimizer": ("adam", f"{SEMI_MODULE}: optim.Adam"),
        "lr_head": (1e-4, f"{SEMI_MODULE}: one Adam over encoder + classifier"),
        "scheduler": ("authors_epoch_cosine", f"{SEMI_MODULE}: CosineAnnealingLR(T_max=len(dl)), per epoch"),
        "schedule_epoch": ("single_device", f"{SEMI_MODULE}: len(self.train_dataloader())"),
        "warmup_epochs": (0, f"{SEMI_MODULE}: no warm-up"),
        "wd_norm_and_bias": (True, f"{SEMI_MODULE}: Adam(..., weight_decay=wd)"),
        "dataset.aug_policy": ("authors", f"{SEMI_MODULE}: AugTransform(name, size) = policy 'custom'"),
        "encoder.backbone": ("resnet50", f"{RESNET}: ResnetMultiProj default"),
        "trainer.devices": ("auto", f"{REPO} main_semi_supervised.py: gpus=-1"),
        "encoder.maxpool": (True, f"{RESNET}: the max-pool is kept"),
        "encoder.projector_last_bias": (False, f"{RESNET}: nn.Linear(..., bias=False)"),
    },
    "voc": {
        "encoder.backbone": ("resnet50", f"{RESNET}: ResnetMultiProj default"),
        "warmup_epochs": (0, f"{REPO} src/model/voc_linear_eval_module.py: Adam without a schedule"),
        "encoder.maxpool": (True, f"{RESNET}: the max-pool is kept"),
        "encoder.projector_last_bias": (False, f"{RESNET}: nn.Linear(..., bias=False)"),
    },
}
SCHEMAS = {
    "self_supervised": PretrainConfig,
    "distillation": PretrainConfig,
    "semi_supervised": SemiSupervisedConfig,
    "voc": VOCConfig,
}
# keys of their files that name things rather than set the run (paths, labels), or that this project's
# seed-named configs set deliberately (docs/authors.md)
NOT_PINNED = {"comment", "fine_tune_from", "encoder_type", "dataset.path"}
OURS_ONLY = {
    "comment",
    "dataset.path",
    "dataset.val_fraction",
    "cache.enabled",
    "trainer.accelerator",
    "hog.nbins",
    "hog.pool",
    "scatnet.shape",
}


def flatten(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and key not in ("params",):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def expected_values(name: str) -> dict:
    """{dotted key: (value, source)} of the authors' run behind seed config ``name``."""
    file, protocol, contents = AUTHORS_FILES[name]
    values = {}
    for key, value in flatten(contents).items():
        if key in NOT_PINNED:
            continue
        if key in ("lr", "wd"):
            value = float(value)
        key = {"std_margin": "loss.std_margin", "normalize_z": "loss.normalize_z"}.get(key, key)  # seed spellings
        if key == "dataset.aug_policy":
            value = {"custom": "authors"}.get(value, value)  # their 'custom' transform is the `authors` policy
        values[key] = (value, f"{REPO} {file}")
    values.update(CODE_FIXED[protocol])
    dataset = contents["dataset"]["name"]
    if dataset in STATS:
        values["dataset.mean"] = (STATS[dataset][0], f"{TRANSFORM}: DATASET_STATS['{dataset}']")
        values["dataset.std"] = (STATS[dataset][1], f"{TRANSFORM}: DATASET_STATS['{dataset}']")
    if protocol in ("self_supervised", "distillation") and "small_kernel" not in contents["encoder"]:
        values["encoder.small_kernel"] = (False, f"{RESNET}: small_kernel=False by default")
    return values


def resolved(cfg) -> dict:
    flat = flatten(to_dict(cfg))
    if flat.get("representations") is not None:
        flat["representations"] = [(r["name"], r["weight"], r["params"]) for r in flat["representations"]]
    return flat


def load(path, protocol):
    return load_config(path, schema=SCHEMAS[protocol], protocol=protocol)


@pytest.mark.parametrize("name", sorted(AUTHORS_FILES))
def test_seed_named_config_is_the_authors_run_value_for_value(name):
    protocol = AUTHORS_FILES[name][1]
    ours = resolved(load(ROOT / "configs" / f"{name}.yaml", protocol))
    wrong = {
        key: (ours.get(key, "<missing>"), value, source)
        for key, (value, source) in expected_values(name).items()
        if ours.get(key, "<missing>") != value
    }
    assert not wrong, "\n".join(
        f"{key}: ours {got!r}, the authors' {want!r} ({src})" for key, (got, want, src) in wrong.items()
    )


@pytest.mark.parametrize("name", sorted(AUTHORS_FILES))
def test_the_authors_file_resolves_to_the_seed_named_config(name, tmp_path):
    """Their file as it is (written here from the table) resolves to their run, and to exactly what the
    seed-named config resolves to, but for the keys this project sets on purpose (OURS_ONLY)."""
    file, protocol, contents = AUTHORS_FILES[name]
    path = tmp_path / file.split("/")[-1]
    path.write_text(yaml.safe_dump(contents, sort_keys=False))
    theirs = resolved(load(path, protocol))
    for key, (value, source) in expected_values(name).items():
        assert theirs.get(key, "<missing>") == value, f"{key}: {theirs.get(key)!r} != {value!r} ({source})"
    ours = resolved(load(ROOT / "configs" / f"{name}.yaml", protocol))
    differ = {k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k)} - OURS_ONLY
    assert not differ, {k: (ours.get(k), theirs.get(k)) for k in sorted(differ)}


def test_a_config_without_representations_gets_the_authors_five_with_their_sign_and_says_so(tmp_path, capsys):
    path = tmp_path / "theirs.yaml"
    path.write_text(yaml.safe_dump(AUTHORS_FILES["stl10_self_supervised"][2]))
    cfg = load_config(path, schema=PretrainConfig, protocol="self_supervised")
    assert [(r.name, r.weight) for r in cfg.representations] == [(n, w) for n, w, _ in FIVE]
    assert "authors' format" in capsys.readouterr().err
    explicit = tmp_path / "none.yaml"
    explicit.write_text(yaml.safe_dump({**AUTHORS_FILES["stl10_self_supervised"][2], "representations": []}))
    assert load_config(explicit, schema=PretrainConfig).representations == []  # an explicit empty list stays empty
    assert load_config(explicit, schema=PretrainConfig).probe.source == "batch"  # and nothing else is filled in


def test_set_overrides_win_over_the_authors_defaults(tmp_path):
    path = tmp_path / "theirs.yaml"
    path.write_text(yaml.safe_dump(AUTHORS_FILES["stl10_self_supervised"][2]))
    cfg = load_config(path, ["probe.source=batch", "encoder.maxpool=false"], schema=PretrainConfig)
    assert cfg.probe.source == "batch" and cfg.encoder.maxpool is False and cfg.min_lr == 1e-6


def test_scatnet_shape_and_num_features_are_checked(tmp_path):
    from mvmr.errors import ConfigError

    with pytest.raises(ConfigError, match=r"scatnet.shape \[64, 64\] must be \[dataset.size, dataset.size\]"):
        load_config(ROOT / "configs" / "stl10_self_supervised.yaml", ["scatnet.shape=[64, 64]"])


def test_subset_files_in_the_authors_format_are_read(tmp_path):
    from mvmr.data.datasets.folders import read_classes_file

    subset = tmp_path / "imagenet_50.txt"  # their data/imagenet_subsets/*.txt: "<wnid> <class name>" per line
    subset.write_text("n01601694 Dipper\nn01669191 Box Turtle\nn01755581 Diamondback Snake")
    assert read_classes_file(str(subset)) == ["n01601694", "n01669191", "n01755581"]


@pytest.mark.parametrize(
    "script,name",
    [
        ("main_self_supervised.py", "stl10_self_supervised"),
        ("main_clip_self_supervised.py", "stl10_clip_self_supervised"),
        ("main_semi_supervised.py", "imagenet_semi_supervised"),
    ],
)
def test_print_config_prints_the_resolved_run_and_exits_0(script, name, tmp_path):
    file, protocol, contents = AUTHORS_FILES[name]
    path = tmp_path / "theirs.yaml"
    path.write_text(yaml.safe_dump(contents))
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), "--config", str(path), "--print_config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed == to_dict(load(path, protocol))
    assert not list(tmp_path.glob("runs"))  # no run directory, nothing built


@pytest.mark.parametrize(
    "entry", ["mvmr.cli.evaluate:evaluate", "mvmr.cli.semi:evaluate", "mvmr.cli.voc:evaluate", "mvmr.cli.voc:train"]
)
def test_every_entry_point_has_print_config(entry, capsys):
    import importlib

    module, function = entry.split(":")
    config = {
        "mvmr.cli.evaluate": "stl10_self_supervised",
        "mvmr.cli.semi": "imagenet_semi_supervised",
        "mvmr.cli.voc": "imagenet_voc",
    }[module]
    argv = ["--config", str(ROOT / "configs" / f"{config}.yaml"), "--ckpt", "missing.ckpt", "--print_config"]
    getattr(importlib.import_module(module), function)(argv)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["batch_size"] == 256 and printed["lr"] == 1e-4
