"""End to end on real data (digits): pretrain -> checkpoints/logs -> evaluate; resume; CLI errors."""

import subprocess
import sys

import pytest
import torch
import yaml
from conftest import DIGITS, ROOT, tiny_args


def test_pretraining_writes_run_directory(pretrained_run):
    run, _ = pretrained_run
    assert run.best.is_file() and run.last.is_file()
    assert (run.path / "metrics.csv").is_file() and (run.path / "config.yaml").is_file()
    header = (run.path / "metrics.csv").read_text().splitlines()[0]
    for term in ("train/mse", "train/std", "train/dcor_zz", "train/dcor/hog", "train/loss", "val/top1"):
        assert term in header, term
    cfg = yaml.safe_load((run.path / "config.yaml").read_text())
    assert cfg["dataset"]["size"] == 16 and cfg["epochs"] == 2


def test_checkpoint_reloads_to_same_features(pretrained_run):
    from mvmr.methods.pretrain import MVMRPretrainModule

    run, _ = pretrained_run
    a = MVMRPretrainModule.from_checkpoint(str(run.last)).eval()
    b = MVMRPretrainModule.from_checkpoint(str(run.last)).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    state = torch.load(run.last, weights_only=False)["state_dict"]
    assert torch.equal(a.backbone.conv1.weight, state["backbone.conv1.weight"])


def test_evaluate_probe_and_retrain(pretrained_run, capsys):
    from mvmr.cli.evaluate import evaluate

    run, args = pretrained_run
    base = [a for a in args]
    res = evaluate(base + ["--ckpt", str(run.best), "--no_progress"])
    assert 0 <= res["probe_top1"] <= 100 and 0 <= res["knn_top1"] <= 100
    res = evaluate(base + ["--ckpt", str(run.best), "--retrain", "--epochs", "2", "--no_progress"])
    out = capsys.readouterr().out
    assert "linear (retrained on train" in out and "k-NN (k=20, cosine)" in out
    assert "linear (refit on train+val" in out
    assert res["linear_top1"] > 30 and res["refit_top1"] > 30  # well above chance (10%) after a few steps
    res = evaluate(
        base + ["--ckpt", str(run.best), "--retrain", "--epochs", "1", "--no_progress", "--set", "eval.refit=false"]
    )
    assert "refit_top1" not in res and "refit on train+val" not in capsys.readouterr().out
    res = evaluate(
        base + ["--ckpt", str(run.best), "--retrain", "--epochs", "2", "--no_progress", "--set", "eval.mirror=true"]
    )
    assert "linear (retrained on train, center + mirror" in capsys.readouterr().out
    assert res["linear_top1"] > 30 and res["knn_top1"] > 30
    evaluate(base + ["--ckpt", str(run.best), "--no_progress", "--set", "eval.mirror=true"])
    assert "online probe (center, ten-crop needs size >= 64)" in capsys.readouterr().out  # trained on x̄ only


def test_rerun_resumes_from_last(pretrained_run, capsys):
    from mvmr.cli.pretrain import pretrain

    run, args = pretrained_run
    pretrain(args + ["--set", "epochs=3"])
    out = capsys.readouterr().out
    assert "Resuming from" in out and str(run.last) in out
    assert torch.load(run.last, weights_only=False)["global_step"] == 9  # 3 steps in each of epochs 0, 1 then 2
    from mvmr.plots import read_epoch_metrics

    losses = read_epoch_metrics(run.path / "metrics.csv")["train/loss"]
    assert [epoch for epoch, _ in losses] == [0, 1, 2]  # metrics.csv kept the first run's rows


def _run(args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer=rmsprop", "allowed: adam, adamw, lars, sgd"),
        ("dataset.name=nope", "unknown dataset 'nope'"),
        ("representations=[{name: sift}]", "unknown representation 'sift'"),
    ],
)
def test_cli_config_errors_are_one_line_exit_2(override, message, tmp_path):
    proc = _run(["main_self_supervised.py", "--config", DIGITS, "--set", override, "--set", f"run_dir={tmp_path}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_cli_missing_checkpoint(tmp_path):
    proc = _run(["evaluate_self_supervised.py", "--config", DIGITS, "--ckpt", str(tmp_path / "none.ckpt")])
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_load_encoder_gives_the_trained_backbone_and_its_transform(pretrained_run):
    import mvmr
    from mvmr.methods.pretrain import MVMRPretrainModule

    run, _ = pretrained_run
    backbone, transform = mvmr.load_encoder(run.best)
    module = MVMRPretrainModule.from_checkpoint(str(run.best)).eval()
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)  # digits are 8x8
    x = torch.stack([transform(image) for image in images])
    assert torch.equal(x, module.eval_view(images))  # the run's x̄, image by image
    with torch.no_grad():
        feats = backbone(x)
        # encoder.width=16 in TINY: layer4 has 8x the first stage's channels
        assert feats.shape == (3, backbone.feature_dim) == (3, 8 * 16)
        torch.testing.assert_close(feats, module(x), rtol=1e-4, atol=1e-5)


def test_load_online_probe_gives_the_trained_probe(pretrained_run, tmp_path):
    from mvmr.api import load_online_probe
    from mvmr.methods.pretrain import MVMRPretrainModule

    run, _ = pretrained_run
    module = MVMRPretrainModule.from_checkpoint(str(run.best)).eval()
    probe = load_online_probe(run.best)
    assert not probe.training and not any(p.requires_grad for p in probe.parameters())
    h = torch.randn(4, module.feature_dim)
    with torch.no_grad():
        torch.testing.assert_close(probe(h), module.probe(h), rtol=0, atol=0)
    ckpt = torch.load(run.best, weights_only=False)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("probe.")}
    assert load_online_probe("without_probe.ckpt", checkpoint=ckpt) is None  # probe.enabled: false


def test_plot_run_writes_curves_and_tsne(pretrained_run, tmp_path):
    from mvmr.cli.plots import main
    from mvmr.plots import read_epoch_metrics

    run, _ = pretrained_run
    series = read_epoch_metrics(run.path / "metrics.csv")
    assert [e for e, _ in series["train/loss"]][:2] == [0, 1] and "val/top1" in series and "train/dcor/hog" in series
    written = main([str(run.path), "--out", str(tmp_path), "--tsne_points", "40", "--no_progress"])
    assert sorted(p.name for p in written) == ["run.png", "tsne.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_auto_lr_and_auto_bs_suggestions_are_used_and_recorded(tmp_path, capsys):
    from mvmr.cli.pretrain import pretrain

    run = pretrain(
        tiny_args(tmp_path, "tuned", ["epochs=1", "trainer.limit_train_batches=2"]) + ["--auto_lr", "--auto_bs"]
    )
    out = capsys.readouterr().out
    assert "--auto_lr: lr = " in out and "--auto_bs: batch_size = " in out
    cfg = yaml.safe_load((run.path / "config.yaml").read_text())
    assert cfg["lr_suggested"] is not None and cfg["lr"] == cfg["lr_suggested"]
    assert cfg["batch_size_suggested"] is not None and cfg["batch_size"] == cfg["batch_size_suggested"]


def test_auto_bs_under_ddp_is_a_one_line_explanation(tmp_path):
    proc = _run(
        [
            "main_self_supervised.py",
            *tiny_args(tmp_path, "ddp_tune", ["trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp"]),
            "--auto_bs",
        ]
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "tune on one device" in proc.stderr.strip().splitlines()[-1]


def test_trainer_optimiser_uses_fused_kernels_on_cpu(pretrained_run):
    """The optimiser Lightning built (as saved in last.ckpt) runs torch's fused kernel in every group."""
    run, _ = pretrained_run
    groups = torch.load(run.last, weights_only=False)["optimizer_states"][0]["param_groups"]
    assert groups and all(group["fused"] is True for group in groups)


def test_run_figure_shows_the_dependence_as_dcor_and_uses_log_axes_across_decades():
    from mvmr.plots import spans_decades, term_curve

    assert term_curve("train/dcor/hog", [(0, 0.25), (1, 0.1)]) == ("dCor(hog(x̄), z)", [0, 1], [0.75, 0.9])
    assert term_curve("train/dcor_zz", [(0, 0.5)])[0] == "dCor(z̄, z)"
    assert term_curve("train/dcov/pixels", [(0, -2.0)])[2] == [2.0]
    assert term_curve("train/std", [(0, 1.0)])[0] == "variance hinge (z and z̄)"
    assert spans_decades([1.0, 0.05]) and not spans_decades([1.0, 0.5]) and not spans_decades([1.0, 0.0])


def test_lightnings_banners_are_filtered_but_its_other_lines_kept(caplog):
    import logging

    from mvmr.training import configure_runtime

    configure_runtime()
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero"):
        logger.info("💡 Tip: For seamless cloud logging, try installing litlogger")
        logger.info("GPU available: False, used: False")
        logger.info("`Trainer(limit_val_batches=1.0)` was configured so 100% of the batches will be used..")
        logger.info("`Trainer.fit` stopped: `max_epochs=1` reached.")
    assert [r.getMessage() for r in caplog.records] == ["`Trainer.fit` stopped: `max_epochs=1` reached."]
