"""Linear evaluation of a pretrained encoder: the online probe (default) or a retrained linear head, plus k-NN;
or, with ``--protocol authors``, the numbers the authors' evaluate_self_supervised.py computes.

Only the backbone (and the probe's weights) are read from the checkpoint: no representation or teacher is
built, so a distilled checkpoint is evaluated without its teacher's weights file."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from mvmr import messages
from mvmr.api import load_frozen_backbone, load_online_probe
from mvmr.checkpoint import read_checkpoint
from mvmr.config import PretrainConfig
from mvmr.data import MVMRDataModule
from mvmr.data.views import MirroredView, build_eval_view, build_feature_view, build_test_view, build_train_view
from mvmr.errors import CheckpointError, DataError
from mvmr.evaluation.authors import probe_accuracy_authors, retrain_head_authors
from mvmr.evaluation.features import extract_features
from mvmr.evaluation.knn import knn_logits
from mvmr.evaluation.linear import fit_linear, refit_linear
from mvmr.evaluation.metrics import topk_accuracy
from mvmr.hardware import default_device
from mvmr.models import use_channels_last
from mvmr.tables import format_table
from mvmr.training import configure_runtime

AUTHORS_RETRAIN_EPOCHS = 100  # their evaluate_self_supervised.py --epochs default


def run_evaluation(args, cfg: PretrainConfig) -> dict[str, float]:
    """Evaluate ``args.ckpt`` on the data of ``cfg`` (the linear / k-NN protocol, or ``--protocol authors``)."""
    configure_runtime()
    pl.seed_everything(cfg.seed, verbose=False)
    device = default_device()
    if args.protocol == "authors":
        cfg.dataset.val_fraction = 0.0  # their heads train on the whole labelled train split
    dm = MVMRDataModule(cfg.dataset, cfg.eval.batch_size, cfg.n_workers, seed=cfg.seed)
    dm.setup("fit")
    if not dm.info.n_classes or not len(dm.test_dataset):
        raise DataError(
            f"linear evaluation needs labelled train and test images; {cfg.dataset.name} at "
            f"'{cfg.dataset.path}' has {'no labels' if not dm.info.n_classes else 'no test split'} "
            "(use train/<class>/ and test/<class>/ or val/<class>/ folders, or embed the images with "
            "scripts/embed.py)"
        )
    checkpoint = read_checkpoint(args.ckpt)  # read once (any format): backbone and probe come from it
    frozen = load_frozen_backbone(
        args.ckpt, device, checkpoint, cfg.eval.weights, encoder=cfg.encoder, info=dm.info, image_size=cfg.dataset.size
    )
    messages.info(
        f"backbone weights: {frozen.weights}"
        + (
            " (the run's moving average; eval.weights=online for the trained weights)"
            if frozen.weights == "ema"
            else ""
        )
    )
    use_channels_last(frozen.backbone, cfg.channels_last)
    info, size = frozen.info, frozen.image_size
    progress = not args.no_progress

    def backbone(x: torch.Tensor) -> torch.Tensor:
        return frozen.backbone(x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x)

    if args.protocol == "authors":
        return evaluate_authors(args, cfg, dm, frozen, backbone, checkpoint, device, progress)
    mirror = cfg.eval.mirror and args.retrain  # the online probe was trained on x̄ only
    train_view = build_feature_view(size, info.mean, info.std, mirror, info.eval_resize).to(device)
    test_view, crops = build_test_view(size, info.mean, info.std, cfg.eval.ten_crop, mirror, info.eval_resize)
    test_view = test_view.to(device)

    extract = lambda loader, view, name: extract_features(backbone, loader, view, device, name, progress)
    train_x, train_y = extract(
        dm.labelled_train_dataloader(shuffle=False, drop_last=False), train_view, "train features"
    )
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
        fit = fit_linear(
            train_x, train_y, val_x, val_y, n_classes, cfg.eval.lrs, cfg.eval.wds, epochs, cfg.eval.batch_size, cfg.seed
        )
        with torch.no_grad():
            acc = topk_accuracy(fit.head(test_x), test_y)
        rows.append(
            [
                f"linear (retrained on train, {crops}; lr={fit.lr:g} wd={fit.wd:g} epochs={fit.epochs}, "
                f"val top-1 {fit.val_top1:.2f})",
                acc[1],
                acc[5],
            ]
        )
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
            raise CheckpointError(f"'{args.ckpt}' has no online probe; pass --retrain to train a linear head")
        with torch.no_grad():
            logits = probe(test_x.to(device)).cpu()
            logits = logits.mean(1) if logits.ndim == 3 else logits
        acc = topk_accuracy(logits, test_y)
        rows.append([f"online probe ({crops})", acc[1], acc[5]])
        results.update(probe_top1=acc[1], probe_top5=acc[5])

    knn = topk_accuracy(
        knn_logits(
            mean_over_crops(train_x),
            train_y,
            mean_over_crops(test_x),
            n_classes,
            cfg.eval.knn_k,
            cfg.eval.knn_temperature,
        ),
        test_y,
    )
    rows.append([f"k-NN (k={cfg.eval.knn_k}, cosine)", knn[1], knn[5]])
    results.update(knn_top1=knn[1])
    messages.info(f"{cfg.dataset.name} test split: {test_y.numel()} images, {train_y.numel()} labelled train images")
    messages.info(format_table(["evaluation", "top-1 %", "top-5 %"], rows))
    return results


def evaluate_authors(args, cfg, dm, frozen, backbone, checkpoint, device, progress: bool) -> dict[str, float]:
    """``--protocol authors``: the numbers the authors' evaluate_self_supervised.py computes (see
    :mod:`mvmr.evaluation.authors`), labelled as such."""
    info, size = frozen.info, frozen.image_size
    n_classes = cfg.dataset.n_classes or info.n_classes
    test_loader = dm.test_dataloader()
    probe = load_online_probe(args.ckpt, device, checkpoint)
    results: dict[str, float] = {}
    if args.retrain:
        epochs = args.epochs or AUTHORS_RETRAIN_EPOCHS
        train_view = build_train_view(
            "authors", size, info.mean, info.std, info.channels, compile_ops=cfg.compile_view_ops
        ).to(device)
        fit = retrain_head_authors(
            backbone,
            frozen.backbone.feature_dim,
            n_classes,
            dm.labelled_train_dataloader(shuffle=True, drop_last=False),
            train_view,
            test_loader,
            build_eval_view(size, info.mean, info.std, info.eval_resize).to(device),
            epochs,
            device,
            init=probe,
            progress=progress,
            log=None if not progress else print,
        )
        label = (
            f"linear head retrained the authors' way ({epochs} epochs, best epoch {fit.best_epoch} CHOSEN ON "
            "THE TEST SPLIT, centre view)"
        )
        rows = [[label, fit.best_top1, fit.best_top5]]
        results.update(
            authors_retrain_top1=fit.best_top1, authors_retrain_top5=fit.best_top5, authors_retrain_epoch=fit.best_epoch
        )
    else:
        if probe is None:
            raise CheckpointError(f"'{args.ckpt}' has no online probe; pass --retrain to train a linear head")
        acc = probe_accuracy_authors(
            backbone, probe, test_loader, MirroredView(size, info.mean, info.std, info.eval_resize).to(device), device
        )
        rows = [["online probe, the authors' way (ten_crop at the image size = x̄ and its mirror)", acc[1], acc[5]]]
        results.update(authors_probe_top1=acc[1], authors_probe_top5=acc[5])
    messages.info(
        f"{cfg.dataset.name} test split: {len(test_loader.dataset)} images; protocol: authors "
        "(vkinakh/mv-mr evaluate_self_supervised.py), comparable with the paper's table"
    )
    messages.info(format_table(["evaluation (authors' protocol)", "top-1 %", "top-5 %"], rows))
    return results
