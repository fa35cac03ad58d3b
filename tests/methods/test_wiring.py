"""The joints between the tested parts: one training step's loss recomputed from its definition (METHOD.md) on
g(f(x̄)), g(f(x')) and φ(x̄) with the config's weights; a short pretraining that beats its untrained start; the
linear-evaluation grid's choice on a problem whose best point is known; ScatNet's zeroth and first order on inputs
whose transform is known without kymatio."""

import dcor
import numpy as np
import pytest
import torch
from conftest import ROOT

from mvmr.config import load_config
from mvmr.data import DatasetInfo
from mvmr.methods.pretrain import MVMRPretrainModule

REPRESENTATIONS = "[{name: pixels, weight: 2.0}, {name: hog, weight: 3.0, params: {nbins: 6, pool: 4}}]"


def tiny_module(extra=()) -> MVMRPretrainModule:
    cfg = load_config(
        ROOT / "configs" / "digits_self_supervised.yaml",
        [
            "encoder.width=8",
            "encoder.out_dim=16-16",
            "dataset.size=16",
            "probe.enabled=false",
            "compile_view_ops=false",
            f"representations={REPRESENTATIONS}",
            "loss.std_weight=0.5",
            "loss.mse_weight=1.5",
            "loss.dcor_weight=0.7",
            *extra,
        ],
    )
    module = MVMRPretrainModule(cfg, DatasetInfo(10, 3, (0.5,) * 3, (0.25,) * 3))
    module.log = module.log_dict = lambda *a, **k: None  # no Trainer here
    return module.train()


def reference_loss(module, images: torch.Tensor, seed: int) -> float:
    """METHOD.md's loss in float64 from the module's own parts, dCor by the dcor package."""
    cfg = module.cfg
    with torch.no_grad():
        x_bar = module.eval_view(images)
        torch.manual_seed(seed)  # the same draws as the training step's view
        x_aug = module.train_view(images)
        z_bar = module.projector(module.backbone(x_bar)).double().numpy()
        z = module.projector(module.backbone(x_aug)).double().numpy()
        phi = {key: rep(x_bar).double().numpy() for key, rep in module.representations.items()}
    std = lambda a: np.maximum(0, cfg.loss.std_margin - np.sqrt(a.var(axis=0, ddof=1) + 1e-4)).mean()
    loss = (
        cfg.loss.mse_weight * ((z_bar - z) ** 2).mean()
        + cfg.loss.std_weight * (std(z) + std(z_bar))
        + cfg.loss.dcor_weight * (1 - dcor.distance_correlation(z_bar, z))
    )
    for rep_cfg, (key, value) in zip(cfg.representations, phi.items()):
        loss += rep_cfg.weight * (1 - dcor.distance_correlation(value, z))
    return loss


def test_a_training_steps_loss_is_the_methods_loss_with_the_configs_weights():
    torch.manual_seed(0)
    module = tiny_module()
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    batch = (images, torch.full((12,), -1), torch.arange(12))
    torch.manual_seed(7)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    loss = module.training_step(batch, 0).item()
    module.load_state_dict(state)  # undo the batch-norm statistics the step updated
    expected = reference_loss(module, images, seed=7)
    assert loss == pytest.approx(expected, rel=2e-4)
    # a weight dropped changes the reference (φ taken from x', z and z̄ swapped, the weights dropped: each fails
    # the comparison above, checked by breaking the training step)
    assert abs(expected - reference_loss(tiny_module(["loss.dcor_weight=0.0"]), images, 7)) > 1e-3


def test_a_short_pretraining_lowers_the_loss_and_beats_its_untrained_encoder(tmp_path):
    from mvmr.cli.evaluate import evaluate
    from mvmr.cli.pretrain import pretrain
    from mvmr.plots import read_epoch_metrics

    config = str(ROOT / "configs" / "digits_self_supervised.yaml")
    common = [
        "encoder.width=16",
        "encoder.out_dim=64-64",
        "dataset.size=16",
        "fp16=false",
        "n_workers=0",
        "trainer.progress_bar=false",
        "compile_view_ops=false",
        "eval.epochs=20",
        "eval.lrs=[0.01]",
        "eval.wds=[0.0]",
        "eval.refit=false",
        f"run_dir={tmp_path}",
    ]
    sets = lambda items: [arg for item in items for arg in ("--set", item)]
    trained = pretrain(["--config", config] + sets(common + ["epochs=6", "warmup_epochs=1", "name=trained"]))
    untrained = pretrain(
        ["--config", config]
        + sets(common + ["epochs=1", "warmup_epochs=0", "name=untrained", "trainer.limit_train_batches=1", "lr=1e-12"])
    )
    losses = [value for _, value in read_epoch_metrics(trained.path / "metrics.csv")["train/loss"]]
    assert losses[-1] < losses[0] - 0.05
    evaluate_args = lambda run: (
        ["--config", config, "--ckpt", str(run.last), "--retrain", "--no_progress"] + sets(common)
    )
    after, before = evaluate(evaluate_args(trained)), evaluate(evaluate_args(untrained))
    assert after["knn_top1"] > before["knn_top1"] + 5 and after["linear_top1"] > before["linear_top1"]


def test_the_linear_grid_picks_the_point_that_is_best_on_validation():
    """Separable data whose labels depend on one feature of large scale: without weight decay the head separates
    it; a huge weight decay cannot; the grid must report lr/wd from the first and a perfect validation score."""
    from mvmr.evaluation.linear import fit_linear

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=generator)
    y = (x[:, 3] > 0).long()
    fit = fit_linear(x[:300], y[:300], x[300:], y[300:], 2, lrs=[1e-2], wds=[0.0, 1e3], epochs=30, batch_size=50)
    assert fit.wd == 0.0 and fit.val_top1 >= 90
    tiny_lr = fit_linear(x[:300], y[:300], x[300:], y[300:], 2, lrs=[1e-7, 1e-1], wds=[0.0], epochs=5, batch_size=50)
    assert tiny_lr.lr == 1e-1


def test_scatnet_on_inputs_with_a_known_transform():
    """Without kymatio as the reference: a constant image gives its value in the zeroth-order channel (φ averages)
    and zero in every wavelet channel (the Morlet wavelets have zero mean, up to their tiny truncation); the zeroth
    order is linear and the first order is invariant to adding a constant."""
    from mvmr.representations import build_representation

    scatnet = build_representation("scatnet", {"J": 2, "L": 4}, in_channels=1, image_size=32)
    constant = torch.full((1, 1, 32, 32), 0.7)
    out = scatnet.scattering(constant)[0, 0]  # (K, 8, 8): K = 1 + J L + L² J (J-1) / 2
    assert out.shape[0] == 1 + 2 * 4 + 16
    torch.testing.assert_close(out[0], torch.full_like(out[0], 0.7), atol=1e-4, rtol=0)
    assert out[1:].abs().max() < 1e-3
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b = scatnet.scattering(x)[:, 0], scatnet.scattering(3 * x - 0.2)[:, 0]
    torch.testing.assert_close(b[:, 0], 3 * a[:, 0] - 0.2, atol=1e-4, rtol=1e-4)  # S0 linear
    shifted = scatnet.scattering(x + 0.5)[:, 0]
    torch.testing.assert_close(shifted[:, 1:9], a[:, 1:9], atol=2e-3, rtol=0)  # |x * ψ| ignores a constant


def test_probe_gets_a_zero_gradient_from_a_batch_without_labels_and_the_mean_otherwise():
    """DDP (find_unused_parameters=False) stops at the next step when a parameter got no gradient: a batch of only
    unlabelled images (probe.source=batch on a partly unlabelled set) must still reach the probe's weights."""
    module = tiny_module(["probe.enabled=true"])
    h = torch.randn(6, module.feature_dim)
    loss, logged = module._probe_step(h, torch.full((6,), -1))
    loss.backward()
    assert logged == {} and float(loss) == 0.0
    assert module.probe.weight.grad is not None and torch.count_nonzero(module.probe.weight.grad) == 0
    labels = torch.tensor([3, -1, 0, -1, 7, 1])
    loss, logged = module._probe_step(h, labels)
    kept = labels >= 0
    expected = torch.nn.functional.cross_entropy(module.probe(h[kept]), labels[kept])
    assert torch.allclose(loss, expected) and "train/probe_top1" in logged


def _nan_on_rank_one(rank: int, port: int, out_dir: str) -> None:
    from gloo import init_gloo, save_rank_results

    from mvmr.methods.pretrain import NonFiniteLossError

    init_gloo(rank, port, 2)
    module = tiny_module()
    loss = torch.tensor(float("nan") if rank == 1 else 1.0)
    try:
        module._check_finite(loss, {"loss": loss})
        outcome = "went on"
    except NonFiniteLossError as err:
        outcome = str(err)
    save_rank_results(out_dir, rank, outcome)
    torch.distributed.destroy_process_group()


def test_a_nan_on_one_ddp_process_stops_every_process(tmp_path):
    """Alone, the process with the NaN would stop and leave the other waiting in the gradient all-reduce."""
    from gloo import run_gloo

    rank0, rank1 = run_gloo(_nan_on_rank_one, 2, tmp_path, timeout_s=120)
    assert rank0.startswith("the loss became non-finite on another process")
    assert "loss term 'loss' became nan" in rank1


def test_the_sample_index_stays_on_the_cpu_when_a_training_batch_moves_to_the_device():
    """The cache reads its memory map with it; moving it to a GPU and back would wait for the queued kernels."""
    from types import SimpleNamespace

    module = tiny_module()
    batch = [torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.tensor([1, 2]), torch.tensor([5, 9])]
    module._trainer = SimpleNamespace(training=True)
    images, labels, index = module.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert images.device.type == labels.device.type == "meta" and index.device.type == "cpu"
    module._trainer = SimpleNamespace(training=False)  # validation: everything moves, as Lightning does
    assert module.transfer_batch_to_device(batch, torch.device("meta"), 0)[2].device.type == "meta"
