"""The settings that reproduce what the authors' code (vkinakh/mv-mr) fixes in its modules: their learning-rate
schedules (replayed here with torch's own schedulers, stepped as their code steps them), the probe on a full
labelled batch, the projector without a last bias, decay of every parameter, the configured normalisation."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mvmr.methods.optim import SCHEDULES, ScheduleLengths, build_optimizer, param_groups, schedule_lengths


def sched_cfg(**overrides):
    base = dict(
        optimizer="adam",
        wd=1e-6,
        momentum=0.9,
        warmup_epochs=10,
        milestones=[],
        scheduler="warmup_cosine",
        schedule_epoch="run",
        epochs=100,
        min_lr=None,
        lr=1e-4,
        accumulate_grad_batches=1,
        gradient_clip_val=None,
    )
    return SimpleNamespace(**{**base, **overrides})


def lrs_of(cfg, steps: int, steps_per_epoch: int, loader_batches: int, total: int) -> list[float]:
    """The learning rate of each optimiser step from build_optimizer's scheduler (stepped once per step)."""
    p = nn.Parameter(torch.zeros(1))
    built = build_optimizer(cfg, [{"params": [p]}], cfg.lr, total, steps_per_epoch, loader_batches)
    opt, sched = built["optimizer"], built["lr_scheduler"]["scheduler"]
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_authors_clip_schedule_replays_their_module_stepped_per_epoch_and_per_batch():
    """clip_self_supervised_module.py: CosineAnnealingLR(T_max=len(train_dataloader())); Lightning steps it at each
    epoch end, and from epoch `warmup_epochs` on `training_step` steps it before each optimiser step."""
    epochs, batches, warmup = 7, 6, 3
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-4)
    theirs = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=batches)
    expected = []
    for epoch in range(epochs):
        for _ in range(batches):
            if epoch >= warmup:
                theirs.step()  # manual, in training_step
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
        theirs.step()  # Lightning's per-epoch step
    cfg = sched_cfg(scheduler="authors_clip", warmup_epochs=warmup, epochs=epochs, schedule_epoch="single_device")
    ours = lrs_of(cfg, epochs * batches, batches, batches, epochs * batches)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert min(ours[warmup * batches :]) < 1e-6 and max(ours[-2 * batches :]) > 0.9e-4  # it falls to 0 and back


def test_authors_epoch_cosine_replays_cosine_annealing_stepped_per_epoch():
    """semi_supervised_module.py: CosineAnnealingLR(T_max=len(train_dataloader())), stepped once per epoch."""
    epochs, batches = 5, 4
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-4)
    theirs = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=batches)
    expected = []
    for _ in range(epochs):
        expected += [opt.param_groups[0]["lr"]] * batches
        opt.step()
        theirs.step()
    cfg = sched_cfg(scheduler="authors_epoch_cosine", warmup_epochs=0, epochs=epochs)
    assert lrs_of(cfg, epochs * batches, batches, batches, epochs * batches) == pytest.approx(expected, rel=1e-9)


def test_warmup_cosine_with_min_lr_is_their_warmup_restart_schedule():
    """CosineAnnealingWarmupRestarts(first_cycle_steps=T, max_lr=lr, min_lr=1e-6, warmup_steps=W), one cycle:
    lr(0) = min_lr, linear to lr at W, cosine back to min_lr at T."""
    lr, floor, warmup, total = 1e-4, 1e-6, 10, 110
    f = SCHEDULES.get("warmup_cosine")(ScheduleLengths(total=total, warmup=warmup, min_lr_ratio=floor / lr))
    assert lr * f(0) == pytest.approx(floor)
    assert lr * f(5) == pytest.approx(floor + (lr - floor) * 5 / warmup)
    assert lr * f(warmup) == pytest.approx(lr)
    assert lr * f(60) == pytest.approx(floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * 50 / 100)))
    assert lr * f(total) == pytest.approx(floor)


def test_single_device_epochs_stretch_the_schedule_under_accumulation():
    """With accumulate_grad_batches 8 their schedule counts len(train_dataloader()) steps per epoch while the
    optimiser steps once per 8 batches: after all epochs it has run 1/8 of its cycle."""
    cfg = sched_cfg(schedule_epoch="single_device", accumulate_grad_batches=8, epochs=80, warmup_epochs=1, min_lr=1e-6)
    loader_batches, run_steps_per_epoch = 80, 10
    lengths = schedule_lengths(cfg, 80 * run_steps_per_epoch, run_steps_per_epoch, loader_batches)
    assert (lengths.total, lengths.warmup) == (80 * 80, 80)
    f = SCHEDULES.get("warmup_cosine")(lengths)  # at the run's last optimiser step (800): 1/8 into the cycle
    progress = (800 - 80) / (6400 - 80)
    assert f(800) == pytest.approx(1e-2 + (1 - 1e-2) * 0.5 * (1 + math.cos(math.pi * progress)))
    cfg.schedule_epoch = "run"  # this project's default: the schedule spans the run's own optimiser steps
    run = schedule_lengths(cfg, 80 * run_steps_per_epoch, run_steps_per_epoch, loader_batches)
    assert (run.total, run.warmup) == (800, 10)


def test_constant_lr_groups_keep_their_rate():
    p, q = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    cfg = sched_cfg(warmup_epochs=0, epochs=10)
    built = build_optimizer(cfg, [{"params": [p]}, {"params": [q], "lr": 1e-4, "constant_lr": True}], 1e-3, 100, 10)
    opt, sched = built["optimizer"], built["lr_scheduler"]["scheduler"]
    for _ in range(60):
        opt.step()
        sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-4) and opt.param_groups[0]["lr"] < 5e-4


def test_wd_on_norm_and_bias_follows_the_switch():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ours = {g["weight_decay"] for g in param_groups(model, 0.1) if g.get("lars_exclude")}
    theirs = {g["weight_decay"] for g in param_groups(model, 0.1, decay_norm_and_bias=True)}
    assert ours == {0.0} and theirs == {0.1}


def test_projector_without_last_bias():
    from mvmr.models import build_projector

    theirs = build_projector(16, "32-32-8", last_bias=False)
    assert all(m.bias is None for m in theirs if isinstance(m, nn.Linear))
    assert build_projector(16, "32-8")[-1].bias is not None


def test_configured_normalisation_replaces_the_datasets_and_is_checked(tmp_path):
    from fixtures_data import dataset_cfg, write_stl10

    from mvmr.data.datasets import build_dataset
    from mvmr.errors import ConfigError

    write_stl10(tmp_path)
    own = build_dataset(dataset_cfg("stl10", tmp_path, mean=None, std=None), "train").info
    theirs = build_dataset(
        dataset_cfg("stl10", tmp_path, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]), "train"
    ).info
    assert own.mean != theirs.mean and theirs.mean == (0.485, 0.456, 0.406) and theirs.std == (0.229, 0.224, 0.225)
    with pytest.raises(ConfigError, match="need 3 values"):
        build_dataset(dataset_cfg("stl10", tmp_path, mean=[0.5], std=[0.5]), "train")


def authors_dcor(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Their DistanceCorrelation (vkinakh/mv-mr src/loss/distance_correlation.py), written out: squared
    distances from the Gram formula clamped at 1e-4 before the square root, double centring, the ratio."""

    def distances(a):
        sq = (a * a).sum(1, keepdim=True)
        return torch.sqrt(torch.clamp(sq - 2 * a @ a.T + sq.T, min=1e-4))

    a, b = distances(x), distances(z)
    big_a = a - a.mean(1) - a.mean(0)[:, None] + a.mean()
    big_b = b - b.mean(1) - b.mean(0)[:, None] + b.mean()
    n = x.shape[0]
    cov = torch.sqrt((big_a * big_b).mean() / n**2)
    return cov / torch.sqrt(torch.sqrt((big_a * big_a).mean() / n**2) * torch.sqrt((big_b * big_b).mean() / n**2))


def test_the_authors_distance_clamp_moves_dcor_by_less_than_5e_4():
    """docs/authors.md: their clamp (and their /32 scaling of z and the pixels) is a numerical difference only."""
    from mvmr.losses import distance_correlation

    torch.manual_seed(0)
    z = torch.randn(64, 2048, dtype=torch.float64)
    cases = {
        "z-z": (z + 0.5 * torch.randn_like(z), z, 32.0),
        "pixels": (torch.randn(64, 3072, dtype=torch.float64), z, 32.0),
        "hog": (torch.rand(64, 1536, dtype=torch.float64) * 0.3, z, 1.0),
    }
    for name, (x, y, scale) in cases.items():
        ours = distance_correlation(x, y).item()
        theirs = authors_dcor(x / scale, y / 32).item()
        assert abs(ours - theirs) < 5e-4, (name, ours, theirs)
        assert ours != theirs  # the formulas differ


@pytest.mark.parametrize("source", ["batch", "labelled"])
def test_the_probe_trains_on_a_full_labelled_batch_with_source_labelled(source, tmp_path, monkeypatch):
    """STL10 is mostly unlabelled: the `batch` probe sees the few labelled samples of each pretraining batch, the
    `labelled` one (their OnlineFineTuner) a full batch of the labelled train split at every step."""
    from fixtures_data import write_stl10

    from mvmr.cli.pretrain import pretrain
    from mvmr.methods.pretrain import MVMRPretrainModule

    write_stl10(tmp_path / "stl10", n_train=20, n_test=4, n_unlabeled=60)
    seen = []
    original = MVMRPretrainModule._probe_step

    def record(self, h, labels):
        seen.append(((labels >= 0).sum().item(), labels.numel()))
        return original(self, h, labels)

    monkeypatch.setattr(MVMRPretrainModule, "_probe_step", record)
    overrides = [
        "encoder.width=8",
        "encoder.out_dim=16-16",
        "batch_size=8",
        "trainer.max_steps=4",
        "trainer.limit_val_batches=0",
        "n_workers=0",
        "fp16=false",
        "compile_view_ops=false",
        "trainer.progress_bar=false",
        "dataset.val_fraction=0",
        "cache.enabled=false",
        "representations=[]",
        f"probe.source={source}",
        f"dataset.path={tmp_path / 'stl10'}",
        f"run_dir={tmp_path}",
        "name=probe",
    ]
    pretrain(
        ["--config", str(__import__("conftest").ROOT / "configs" / "stl10_self_supervised.yaml")]
        + [arg for item in overrides for arg in ("--set", item)]
    )
    assert len(seen) == 4
    if source == "labelled":
        assert seen == [(8, 8)] * 4
    else:
        assert all(total < 8 for total, _ in seen) and sum(total for total, _ in seen) < 16


@pytest.mark.parametrize("theirs", [False, True])
def test_semi_supervised_head_is_decayed_with_wd_norm_and_bias_and_counts_one_devices_batches(theirs):
    from mvmr.config import EncoderConfig, SemiSupervisedConfig, build_dataclass
    from mvmr.data import DatasetInfo
    from mvmr.methods.semi_supervised import SemiSupervisedModule

    cfg = build_dataclass(
        SemiSupervisedConfig,
        {
            "wd": 0.01,
            "wd_norm_and_bias": theirs,
            "epochs": 4,
            "batch_size": 5,
            "scheduler": "authors_epoch_cosine",
            "warmup_epochs": 0,
        },
    )
    module = SemiSupervisedModule(
        cfg, DatasetInfo(3, 3, (0.5,) * 3, (0.2,) * 3), EncoderConfig(backbone="resnet18", width=8), 3
    )
    module.trainer = SimpleNamespace(
        estimated_stepping_batches=40,
        max_epochs=4,
        datamodule=SimpleNamespace(num_labelled_train_samples=23),
        precision="32-true",
    )
    built = module.configure_optimizers()
    head = [g for g in built["optimizer"].param_groups if g["params"][0] is module.head.weight][0]
    assert head["weight_decay"] == (0.01 if theirs else 0.0)
    lambdas = built["lr_scheduler"]["scheduler"].lr_lambdas
    assert lambdas[0](10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 1 / 4)))  # epoch 1 of T = 23 // 5 = 4
