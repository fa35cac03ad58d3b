#!/usr/bin/env python
"""What each representation contributes: one equal, short pretraining budget per row, then the same linear
evaluation (features extracted once; lr/wd/epoch chosen on the validation split, never on test).

Rows: no representation terms (MI bound + dCor(z̄, z) only); each of the config's representations alone; all
of them; all with the authors' sign (negative weights); the same encoder trained supervised from scratch with
every label (upper reference: the pretraining rows' batch, optimiser, lr, warm-up and schedule; as many epochs as
``--supervised_epochs``, by default as many as the pretraining rows: give it more to match their time, since a
supervised step sees one view and no representation terms); logistic regression on raw pixels (lower
reference); and the semi-supervised protocol with 1% and 10% of the labels, fine-tuned from the "all" row.

    python benchmarks/ablation.py --config configs/fashion_mnist_self_supervised.yaml --epochs 3 \\
        --out benchmarks/results/ablation_fashion_mnist.md

Long (one pretraining per row); not part of `make test`. Prints the table and writes it as Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import time
from pathlib import Path

import torch

from mvmr.cli.evaluate import evaluate
from mvmr.cli.flags import doc_summary, int_at_least
from mvmr.cli.pretrain import pretrain
from mvmr.config import PretrainConfig, load_config, to_dict
from mvmr.tables import format_table

ROOT = Path(__file__).resolve().parents[1]


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def representation_rows(cfg: PretrainConfig) -> list[tuple[str, str]]:
    """(row name, YAML value of `representations`) for the representation ablations."""

    def entry(rep, sign: float = 1.0) -> str:
        params = ", ".join(f"{k}: {v}" for k, v in rep.params.items())
        return (
            f"{{name: {rep.name}, weight: {sign * abs(rep.weight)}, standardize: {str(rep.standardize).lower()}, "
            f"power: {rep.power}, params: {{{params}}}}}"
        )

    reps = cfg.representations
    rows = [("no representation terms", "[]")]
    rows += [(f"{rep.name} only", f"[{entry(rep)}]") for rep in reps]
    rows += [
        ("all representations", "[" + ", ".join(entry(r) for r in reps) + "]"),
        ("all, authors' sign (weights negated)", "[" + ", ".join(entry(r, -1.0) for r in reps) + "]"),
    ]
    return rows


def write_random_checkpoint(cfg: PretrainConfig, path: Path) -> Path:
    """An untrained encoder in this project's checkpoint format (the supervised row starts from it)."""
    from mvmr.data import MVMRDataModule
    from mvmr.methods.pretrain import MVMRPretrainModule

    dm = MVMRDataModule(cfg.dataset, cfg.batch_size, 0, seed=cfg.seed)
    dm.setup("fit")
    cfg = dataclasses.replace(cfg, representations=[])
    module = MVMRPretrainModule(cfg, dm.info)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": {"config": to_dict(cfg), "info": dataclasses.asdict(dm.info)},
        },
        path,
    )
    return path


def supervised_recipe(cfg: PretrainConfig, epochs: int) -> list[str]:
    """Overrides of the fine-tuning config that make it supervised training from scratch with every label and the
    pretraining rows' recipe (the config's batch, optimiser, lr for backbone and head alike, weight decay,
    schedule and augmentation; the rows' one warm-up epoch); the fine-tuning defaults (lr 1e-4, no warm-up)
    are made for a pretrained encoder and leave a random one under-trained."""
    return [
        f"epochs={epochs}",
        "dataset.percentage=100",
        f"batch_size={cfg.batch_size}",
        f"optimizer={cfg.optimizer}",
        f"lr={cfg.lr}",
        f"lr_head={cfg.lr}",
        f"wd={cfg.wd}",
        f"warmup_epochs={min(1, epochs - 1)}",
        f"scheduler={cfg.scheduler}",
        *augmentation_overrides(cfg.dataset),
        "name=abl_supervised",
    ]


AUGMENTATION_KEYS = ("aug_policy", "aug_strength", "crop_scale", "erase_p")  # the dataset keys that shape x'


def augmentation_overrides(dataset) -> list[str]:
    """``--set`` overrides that give another config ``dataset``'s x' view (JSON values are YAML, None is null)."""
    return [f"dataset.{key}={json.dumps(getattr(dataset, key))}" for key in AUGMENTATION_KEYS]


def pixel_logistic_regression(cfg: PretrainConfig, eval_epochs: int) -> float:
    """Test top-1 of the same linear protocol on raw normalised pixels (x̄ flattened; with eval.mirror also its
    mirror image)."""
    from mvmr.data import MVMRDataModule
    from mvmr.data.views import build_feature_view
    from mvmr.evaluation.features import extract_features
    from mvmr.evaluation.linear import fit_linear
    from mvmr.evaluation.metrics import topk_accuracy

    dm = MVMRDataModule(cfg.dataset, 512, 0, seed=cfg.seed)
    dm.setup("fit")
    view = build_feature_view(cfg.dataset.size, dm.info.mean, dm.info.std, cfg.eval.mirror, dm.info.eval_resize)
    flatten = torch.nn.Flatten()
    tr_x, tr_y = extract_features(
        flatten, dm.labelled_train_dataloader(shuffle=False, drop_last=False), view, progress=False
    )
    va_x, va_y = extract_features(flatten, dm.val_dataloader(), view, progress=False)
    te_x, te_y = extract_features(flatten, dm.test_dataloader(), view, progress=False)
    fit = fit_linear(
        tr_x,
        tr_y,
        va_x,
        va_y,
        dm.info.n_classes,
        cfg.eval.lrs,
        cfg.eval.wds,
        eval_epochs,
        cfg.eval.batch_size,
        cfg.seed,
    )
    with torch.no_grad():
        return topk_accuracy(fit.head(te_x), te_y)[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--config", default=str(ROOT / "configs" / "fashion_mnist_self_supervised.yaml"))
    parser.add_argument(
        "--epochs", type=int_at_least(1), default=3, help="pretraining epochs of every row (equal budget)"
    )
    parser.add_argument("--eval_epochs", type=int_at_least(1), default=30, help="linear-evaluation epochs")
    parser.add_argument(
        "--supervised_epochs",
        type=int_at_least(1),
        default=None,
        help="epochs of the supervised row (default: --epochs); raise it to match the rows' minutes",
    )
    parser.add_argument("--run_dir", default=str(ROOT / "runs" / "ablation"))
    parser.add_argument("--out", default=None, help="Markdown file for the table")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every row")
    parser.add_argument("--skip_semi", action="store_true")
    parser.add_argument(
        "--references_only",
        action="store_true",
        help="only the supervised and raw-pixel reference rows (no pretraining, no semi-supervised rows)",
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    cfg = load_config(args.config, args.set, schema=PretrainConfig)
    common = [
        f"epochs={args.epochs}",
        f"warmup_epochs={min(1, args.epochs - 1)}",
        f"run_dir={args.run_dir}",
        "resume=false",
        "trainer.progress_bar=false",
    ] + args.set
    base = ["--config", args.config]
    rows, all_ckpt = [], None
    for name, reps in [] if args.references_only else representation_rows(cfg):
        slug = name.split(" ")[0].replace(",", "").replace("'", "") + ("_neg" if "sign" in name else "")
        start = time.time()
        run = pretrain(base + sets(common + [f"name=abl_{slug}", f"representations={reps}"]))
        minutes = (time.time() - start) / 60
        ckpt = run.best if run.best.is_file() else run.last
        res = evaluate(
            base
            + ["--ckpt", str(ckpt), "--retrain", "--epochs", str(args.eval_epochs), "--no_progress"]
            + sets(args.set + ["eval.refit=false"])
        )  # the table shows the train-split head
        rows.append([name, f"{minutes:.1f}", res["linear_top1"], res["knn_top1"]])
        if name == "all representations":
            all_ckpt = ckpt
        print(format_table(["row", "pretrain min", "linear top-1 %", "k-NN top-1 %"], rows), flush=True)

    from mvmr.cli.semi import train as semi_train

    semi_cfg = str(ROOT / "configs" / f"{cfg.dataset.name}_semi_supervised.yaml")
    semi_common = [
        f"epochs={args.epochs}",
        f"run_dir={args.run_dir}",
        "resume=false",
        "trainer.progress_bar=false",
        f"dataset.size={cfg.dataset.size}",
        f"dataset.to_rgb={str(cfg.dataset.to_rgb).lower()}",
    ]
    random_ckpt = write_random_checkpoint(cfg, Path(args.run_dir) / "random_init.ckpt")
    start = time.time()
    run = semi_train(
        ["--config", semi_cfg, "--path_ckpt", str(random_ckpt)]
        + sets(semi_common + supervised_recipe(cfg, args.supervised_epochs or args.epochs))
    )
    from mvmr.cli.semi import evaluate as semi_evaluate

    res = semi_evaluate(
        ["--config", semi_cfg, "--ckpt", str(run.best if run.best.is_file() else run.last), "--no_progress"]
        + sets([f"dataset.size={cfg.dataset.size}", f"dataset.to_rgb={str(cfg.dataset.to_rgb).lower()}"])
    )
    rows.append(
        [
            f"supervised from scratch, same encoder, {args.supervised_epochs or args.epochs} epochs (upper reference)",
            f"{(time.time() - start) / 60:.1f}",
            res["top1"],
            "—",
        ]
    )
    rows.append(
        [
            "logistic regression on raw pixels (lower reference)",
            "0",
            pixel_logistic_regression(cfg, args.eval_epochs),
            "—",
        ]
    )
    if not args.skip_semi and all_ckpt is not None:
        for pct in (1, 10):
            start = time.time()
            run = semi_train(
                ["--config", semi_cfg, "--path_ckpt", str(all_ckpt)]
                + sets(semi_common + [f"dataset.percentage={pct}", f"name=abl_semi{pct}"])
            )
            res = semi_evaluate(
                ["--config", semi_cfg, "--ckpt", str(run.best if run.best.is_file() else run.last), "--no_progress"]
                + sets([f"dataset.size={cfg.dataset.size}", f"dataset.to_rgb={str(cfg.dataset.to_rgb).lower()}"])
            )
            rows.append(
                [f"semi-supervised from 'all', {pct}% of labels", f"{(time.time() - start) / 60:.1f}", res["top1"], "—"]
            )
    table = format_table(["row", "minutes", "test top-1 %", "k-NN top-1 %"], rows)
    header = (
        f"Ablation on {cfg.dataset.name} ({args.config}, {args.epochs} pretraining epochs per row, "
        f"linear evaluation {args.eval_epochs} epochs), {datetime.date.today()}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(header)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(header + "\n\n" + table + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
