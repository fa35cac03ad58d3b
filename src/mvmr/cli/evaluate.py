"""``evaluate_self_supervised.py``: online probe (default) or a retrained linear head, plus k-NN.

Only the backbone (and the probe's weights) are read from the checkpoint: no representation or teacher is
built, so a distilled checkpoint is evaluated without its teacher's weights file."""
from __future__ import annotations

import argparse
from typing import Sequence

import pytorch_lightning as pl
import torch

from mvmr.api import load_frozen_backbone, load_online_probe
from mvmr.checkpoint import load_checkpoint
from mvmr.cli.common import default_device, add_common_flags, configure_runtime, format_table, run_main
from mvmr.config import PretrainConfig, load_config
from mvmr.data import MVMRDataModule
from mvmr.data.views import build_feature_view, build_test_view
from mvmr.evaluation.features import extract_features
from mvmr.evaluation.knn import knn_logits
from mvmr.evaluation.linear import fit_linear, refit_linear
from mvmr.evaluation.metrics import topk_accuracy
from mvmr.models import use_channels_last


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Linear evaluation of a pretrained MV-MR encoder")
    parser.add_argument("--config", required=True, help="the self-supervised config the model was trained with")
    parser.add_argument("--ckpt", required=True, help="checkpoint to evaluate (runs/<name>/checkpoints/best.ckpt)")
    parser.add_argument("--epochs", type=int, default=None, help="linear-head epochs with --retrain (default: eval.epochs)")
    parser.add_argument("--retrain", action="store_true", help="train a new linear head on frozen features")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    add_common_flags(parser, tuning=False)
    return parser.parse_args(argv)


def evaluate(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    configure_runtime()
    cfg = load_config(args.config, args.set, schema=PretrainConfig)
    pl.seed_everything(cfg.seed, verbose=False)
    device = default_device()
    checkpoint = load_checkpoint(args.ckpt)  # read once: backbone and probe come from it
    frozen = load_frozen_backbone(args.ckpt, device, checkpoint, cfg.eval.weights)
    print(f"backbone weights: {frozen.weights}" + (" (the run's moving average; eval.weights=online for the "
                                                   "trained weights)" if frozen.weights == "ema" else ""))
    use_channels_last(frozen.backbone, cfg.channels_last)
    dm = MVMRDataModule(cfg.dataset, cfg.eval.batch_size, cfg.n_workers, seed=cfg.seed)
    dm.setup("fit")
    info, size = frozen.info, frozen.image_size
    mirror = cfg.eval.mirror and args.retrain  # the online probe was trained on x̄ only
    train_view = build_feature_view(size, info.mean, info.std, mirror).to(device)
    test_view, crops = build_test_view(size, info.mean, info.std, cfg.eval.ten_crop, mirror)
    test_view = test_view.to(device)
    progress = not args.no_progress

    def backbone(x: torch.Tensor) -> torch.Tensor:
        return frozen.backbone(x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x)

    extract = lambda loader, view, name: extract_features(backbone, loader, view, device, name, progress)
    train_x, train_y = extract(dm.labelled_train_dataloader(shuffle=False, drop_last=False), train_view,
                               "train features")
    test_x, test_y = extract(dm.test_dataloader(), test_view, "test features")
    mean_over_crops = lambda x: x.mean(1) if x.ndim == 3 else x
    n_classes = cfg.dataset.n_classes or info.n_classes
    rows, results = [], {}

    if args.retrain:
        val_x, val_y = extract(dm.val_dataloader(), train_view, "val features")
        has_val = val_x.shape[0] > 0
        if not has_val:
            val_x, val_y = train_x, train_y
        epochs = args.epochs or cfg.eval.epochs
        fit = fit_linear(train_x, train_y, val_x, val_y, n_classes, cfg.eval.lrs, cfg.eval.wds, epochs,
                         cfg.eval.batch_size, cfg.seed)
        with torch.no_grad():
            acc = topk_accuracy(fit.head(test_x), test_y)
        rows.append([f"linear (retrained on train, {crops}; lr={fit.lr:g} wd={fit.wd:g} epochs={fit.epochs}, "
                     f"val top-1 {fit.val_top1:.2f})", acc[1], acc[5]])
        results.update(linear_top1=acc[1], linear_top5=acc[5])
        if cfg.eval.refit and has_val:
            head = refit_linear(train_x, train_y, val_x, val_y, n_classes, fit, epochs, cfg.eval.batch_size, cfg.seed)
            with torch.no_grad():
                acc = topk_accuracy(head(test_x), test_y)
            rows.append([f"linear (refit on train+val with the same lr/wd/epochs, {crops})", acc[1], acc[5]])
            results.update(refit_top1=acc[1], refit_top5=acc[5])
    else:
        probe = load_online_probe(args.ckpt, device, checkpoint)
        if probe is None:
            raise SystemExit("error: this checkpoint has no online probe; pass --retrain")
        with torch.no_grad():
            logits = probe(test_x.to(device)).cpu()
            logits = logits.mean(1) if logits.ndim == 3 else logits
        acc = topk_accuracy(logits, test_y)
        rows.append([f"online probe ({crops})", acc[1], acc[5]])
        results.update(probe_top1=acc[1], probe_top5=acc[5])

    knn = topk_accuracy(knn_logits(mean_over_crops(train_x), train_y, mean_over_crops(test_x), n_classes,
                                   cfg.eval.knn_k, cfg.eval.knn_temperature), test_y)
    rows.append([f"k-NN (k={cfg.eval.knn_k}, cosine)", knn[1], knn[5]])
    results.update(knn_top1=knn[1])
    print(f"{cfg.dataset.name} test split: {test_y.numel()} images, {train_y.numel()} labelled train images")
    print(format_table(["evaluation", "top-1 %", "top-5 %"], rows))
    return results


main = run_main(evaluate)
