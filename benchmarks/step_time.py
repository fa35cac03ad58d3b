#!/usr/bin/env python
"""MV-MR training-step cost against its encoder-only floor, measured side by side in one process.

Settings (the authors' CPU numbers in the scale issue): ResNet-18, projector 2048-2048-2048,
  32x32 with batch 128, and 96x96 with batch 64 (``--sizes 32,96``, the default); ``--sizes 224`` adds 224x224
  with batch 32 (ImageNet crops, where the cache cannot be used); three channels; the authors' five
  representations (pixels, augmented pixels, HOG, ScatNet, local std).
Variants, each a full optimiser step (views on the device, forward, backward, Adam; fused like the trainer's):
  floor      two views, MSE + variance hinge + dCor(z̄, z), no representation terms;
  uncached   + the five representations computed every step (what the authors' code does);
  cached     + the deterministic four read from the memory-mapped cache (augmented pixels still per step);
  cached_proj  the same with ``cache.max_dim`` (seeded random projection of wider representations);
  uncached_subsampled  (opt-in) uncached with ScatNet's ``subsample_second_order`` approximation;
  and two parts of the cached step's extra cost: the four cached terms without the augmented copy, and the
  floor plus augmented_pixels alone (one more augmented view per step and its dCor).
Rounds interleave the variants so machine noise hits them alike. Reported per variant: the median step time,
its ratio to the floor's median, and the median over rounds of the ratio within the round (each round's
variant time over the same round's floor time; slow drifts of the machine cancel in it), and that ratio's first
and third quartiles over the rounds (its spread on this machine).
Also: the data pipeline (the DataModule's pretraining loader, n_workers=2, uint8 decode only) in images/s
against the step's images/s; the uncached step's extra work timed piece by piece outside the step (the augmented
copy's view, each representation's φ(x̄), each representation's dCor term, forward and backward), each as a
fraction of the floor and as a share of the uncached step's measured extra time (its median minus the floor's);
and the cached step's extra work the same way (the augmented copy's view, its dCor term, the four cache reads, the
four cached dCor terms). The sum of a step's pieces is the ratio it would have if nothing but this work were added.

    python benchmarks/step_time.py [--rounds 5] [--fp32] [--sizes 32,96,224] [--variants floor,uncached,cached]

The last two lines read ``uncached step / floor = X.XX`` and ``full cached step / floor = X.XX`` for 96 px (the
largest setting run when 96 is not): the median of the per-round ratios (the ratio of the medians is in the table
beside it).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from mvmr.cli.flags import doc_summary, int_at_least
from mvmr.config import DatasetConfig, PretrainConfig, RepresentationConfig, load_config
from mvmr.data import DatasetInfo, MVMRDataModule
from mvmr.hardware import cpu_supports_bf16
from mvmr.methods.optim import OPTIMIZERS, fused_supported
from mvmr.methods.pretrain import MVMRPretrainModule
from mvmr.representations.cache import RepresentationCache
from mvmr.tables import format_table

AUTHORS = [
    ("pixels", {}),
    ("augmented_pixels", {}),
    ("hog", {"nbins": 9, "pool": 8}),
    ("scatnet", {"J": 2, "L": 8}),
    ("local_std", {}),
]
DETERMINISTIC = [rep for rep in AUTHORS if rep[0] != "augmented_pixels"]  # the four the cache holds
# the authors' five with ScatNet's approximation switch on (an opt-in variant: --variants ...,uncached_subsampled)
SUBSAMPLED = [
    (name, {**params, "subsample_second_order": True} if name == "scatnet" else params) for name, params in AUTHORS
]
BATCHES = {32: 128, 96: 64, 224: 32}  # image size -> batch (224: what fits a 2-core CPU's step in seconds)
DEFAULT_SIZES = "32,96"
VARIANTS = ("floor", "uncached", "cached", "cached_proj", "cached_four", "copy_only", "uncached_subsampled")
DEFAULT_VARIANTS = VARIANTS[:-1]
HEADLINE_SIZE = 96


def make_module(size: int, batch: int, representations: list) -> MVMRPretrainModule:
    cfg = load_config(
        None,
        [
            f"dataset.size={size}",
            f"batch_size={batch}",
            "encoder.backbone=resnet18",
            "encoder.out_dim=2048-2048-2048",
            "encoder.small_kernel=false",
            "probe.enabled=false",
        ],
        schema=PretrainConfig,
    )
    cfg.representations = [RepresentationConfig(name=n, weight=1.0, params=p) for n, p in representations]
    info = DatasetInfo(n_classes=10, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    module = MVMRPretrainModule(cfg, info)
    module.log = module.log_dict = lambda *a, **k: None  # no Trainer here
    return module.to(memory_format=torch.channels_last)


class Stepper:
    """One variant: a module, its optimiser and (optionally) a representation cache."""

    def __init__(self, module: MVMRPretrainModule, precision: torch.dtype | None):
        self.module, self.precision = module.train(), precision
        groups = [{"params": list(module.parameters())}]
        self.opt = OPTIMIZERS.get("adam")(groups, 1e-4, 0.0, 0.9, fused=fused_supported(groups))  # as the trainer

    def step(self, images: torch.Tensor, index: torch.Tensor) -> None:
        labels = torch.full((images.shape[0],), -1)
        with torch.autocast("cpu", dtype=self.precision, enabled=self.precision is not None):
            loss = self.module.training_step((images, labels, index), 0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def attach_cache(module: MVMRPretrainModule, images: torch.Tensor, root: str, max_dim: int | None = None) -> None:
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images)), torch.arange(len(images))), batch_size=64)
    module.representation_cache = RepresentationCache.build(
        dict(module.representations),
        loader,
        module.eval_view,
        root,
        {"bench": images.shape, "max_dim": max_dim},
        max_dim=max_dim,
        progress=False,
    )


def per_round_ratios(times: list[float], floor_times: list[float]) -> list[float]:
    """times[r] / floor_times[r] for every round (both lists hold one time per round)."""
    return [t / f for t, f in zip(times, floor_times)]


def paired_ratio(times: list[float], floor_times: list[float]) -> float:
    """Median over rounds of times[r] / floor_times[r]."""
    return statistics.median(per_round_ratios(times, floor_times))


def paired_ratio_quartiles(times: list[float], floor_times: list[float]) -> tuple[float, float]:
    """First and third quartiles of the per-round ratios (inclusive method): how much the statistic above moves
    from round to round on this machine."""
    q1, _, q3 = statistics.quantiles(per_round_ratios(times, floor_times), n=4, method="inclusive")
    return q1, q3


def timed(fn, rounds: int) -> float:
    """Median seconds of ``fn()`` over ``rounds`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def isolated_extra_work(stepper: Stepper, images: torch.Tensor, index: torch.Tensor, rounds: int) -> dict:
    """Seconds (median) of each piece of work the cached step adds to the floor, each timed alone:
    the augmented copy's view (x' and the copy drawn in one call on 2B images, minus x' alone on B), its dCor term,
    the cached rows' reads, and the cached terms' dCor (the objective's forward and backward with those
    representations, minus without any). ``stepper`` holds a module whose cache holds every representation except
    ``augmented_pixels``."""
    module = stepper.module
    cache = module.representation_cache
    batch = images.shape[0]
    weights = dict(module.objective.representation_weights)
    with torch.no_grad():
        width = module.embed(module.eval_view(images[:2]))[1].shape[1]
        copy = module.representations["augmented_pixels"].from_augmented(module.train_view(images))
    z_bar, z = (torch.randn(batch, width, requires_grad=True) for _ in range(2))
    cached = {key: cache[key].read(index) for key in cache.keys()}

    def objective(reps: dict) -> None:
        loss, _ = module.objective(z_bar, z, reps, {key: weights[key] for key in reps})
        loss.backward()

    def views(n: int) -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=stepper.precision, enabled=stepper.precision is not None):
            module.train_view(images.repeat(n, 1, 1, 1))

    t = {
        "none": timed(lambda: objective({}), rounds),
        "one view": timed(lambda: views(1), rounds),
        "two views": timed(lambda: views(2), rounds),
    }
    t["copy term"] = timed(lambda: objective({"augmented_pixels": copy}), rounds)
    t["reads"] = timed(lambda: [cache[key].read(index) for key in cache.keys()], rounds)
    t["cached terms"] = timed(lambda: objective(cached), rounds)
    return {
        "the augmented copy's view (one more per step)": t["two views"] - t["one view"],
        "the augmented copy's dCor term": t["copy term"] - t["none"],
        f"the {len(cache)} cache reads": t["reads"],
        f"the {len(cache)} cached dCor terms": t["cached terms"] - t["none"],
    }


def isolated_uncached_work(stepper: Stepper, images: torch.Tensor, rounds: int) -> dict:
    """Seconds (median) of each piece of work the uncached step adds to the floor, each timed alone: the augmented
    copy's view (x' and the copy drawn in one call on 2B images, minus x' alone on B), each representation's φ(x̄)
    (the augmented copy's is the view above), and each representation's dCor term (the objective's forward and
    backward with that representation, minus without any). ``stepper`` holds a module without a cache."""
    module = stepper.module
    batch = images.shape[0]
    weights = dict(module.objective.representation_weights)
    with torch.no_grad():
        x_bar = module.eval_view(images)
        width = module.embed(x_bar[:2])[1].shape[1]
        copies = {
            key: rep.from_augmented(module.train_view(images))
            for key, rep in module.representations.items()
            if rep.needs_augment
        }
    reps = {key: copies[key] if key in copies else rep(x_bar) for key, rep in module.representations.items()}
    z_bar, z = (torch.randn(batch, width, requires_grad=True) for _ in range(2))

    def objective(keys: list) -> None:
        loss, _ = module.objective(z_bar, z, {key: reps[key] for key in keys}, {key: weights[key] for key in keys})
        loss.backward()

    def views(n: int) -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=stepper.precision, enabled=stepper.precision is not None):
            module.train_view(images.repeat(n, 1, 1, 1))

    def represent(key: str) -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=stepper.precision, enabled=stepper.precision is not None):
            module.representations[key](x_bar)

    none = timed(lambda: objective([]), rounds)
    pieces = {}
    if copies:
        pieces[f"the augmented cop{'y' if len(copies) == 1 else 'ies'}'s view (one more per step each)"] = timed(
            lambda: views(1 + len(copies)), rounds
        ) - timed(lambda: views(1), rounds)
    for key in module.representations:
        if key not in copies:
            pieces[f"{key}: φ(x̄)"] = timed(lambda key=key: represent(key), rounds)
    for key in module.representations:
        pieces[f"{key}: its dCor term"] = timed(lambda key=key: objective([key]), rounds) - none
    return pieces


def parse_sizes(text: str) -> list[int]:
    """'32,96,224' -> [32, 96, 224] (each one of BATCHES' sizes); an argparse type."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size not in BATCHES for size in sizes):
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of {', '.join(map(str, BATCHES))}, got {text!r}"
        )
    return sizes


def parse_variants(text: str) -> list[str]:
    """'floor,uncached,cached' -> the variants in VARIANTS' order (floor always included); an argparse type."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(VARIANTS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return [name for name in VARIANTS if name in names or name == "floor"]


def data_pipeline_images_per_s(size: int, batch: int, n_batches: int = 20) -> tuple[float, str]:
    """uint8 batches per second from the shared DataModule's pretraining loader (n_workers=2)."""
    for name in ("fashion_mnist", "digits"):
        try:
            dm = MVMRDataModule(DatasetConfig(name=name, size=size, to_rgb=True), batch, 2, seed=0)
            dm.setup("fit")
            break
        except Exception:  # Fashion-MNIST not installed: the embedded digits
            continue
    loader = dm.pretrain_dataloader(shuffle=True, drop_last=True)
    seen, start = 0, None
    for i, (images, _, _) in enumerate(loader):
        if i == 2:
            start, seen = time.perf_counter(), 0  # workers warmed up
        seen += images.shape[0]
        if i == n_batches + 2:
            break
    return seen / (time.perf_counter() - start), name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--rounds", type=int_at_least(2), default=5, help="interleaved rounds (their quartiles need 2)")
    parser.add_argument("--max_dim", type=int, default=8192, help="cache.max_dim of the cached_proj variant")
    parser.add_argument("--fp32", action="store_true", help="float32 even where bf16 is available")
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=parse_sizes(DEFAULT_SIZES),
        help="image sizes, comma-separated, of "
        f"{', '.join(f'{s} (batch {b})' for s, b in BATCHES.items())} (default {DEFAULT_SIZES})",
    )
    parser.add_argument(
        "--variants",
        type=parse_variants,
        default=list(DEFAULT_VARIANTS),
        help=f"variants to time, comma-separated, of {', '.join(VARIANTS)} (floor always; default "
        f"all but uncached_subsampled, the uncached step with ScatNet's subsample_second_order "
        f"approximation)",
    )
    parser.add_argument("--no_pieces", action="store_true", help="skip the piece-by-piece tables (steps only)")
    return parser


def build_steppers(size: int, batch: int, variants: list[str], precision: torch.dtype | None) -> dict:
    recipes = {
        "floor": [],
        "uncached": AUTHORS,
        "cached": AUTHORS,
        "cached_proj": AUTHORS,
        "cached_four": DETERMINISTIC,
        "copy_only": [("augmented_pixels", {})],
        "uncached_subsampled": SUBSAMPLED,
    }
    return {name: Stepper(make_module(size, batch, recipes[name]), precision) for name in variants}


def main() -> None:
    args = build_parser().parse_args()
    precision = None if args.fp32 or not cpu_supports_bf16() else torch.bfloat16
    torch.manual_seed(0)
    label = "bf16 autocast" if precision else "float32"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {label}, channels_last")
    rows, ratio, piece_rows, uncached_rows = [], {}, [], []
    labels = {
        "cached_proj": f"cached, max_dim={args.max_dim}",
        "cached_four": "part: the four cached terms alone (no augmented copy)",
        "copy_only": "part: floor + augmented_pixels alone (the copy)",
        "uncached_subsampled": "uncached, ScatNet subsample_second_order (an approximation)",
    }
    for size in args.sizes:
        batch = BATCHES[size]
        setting = f"{size}x{size}, batch {batch}"
        images = torch.randint(0, 256, (batch * 2, 3, size, size), dtype=torch.uint8)
        index = torch.arange(batch)
        steppers = build_steppers(size, batch, args.variants, precision)
        with tempfile.TemporaryDirectory() as root:
            for name, max_dim in (("cached", None), ("cached_proj", args.max_dim), ("cached_four", None)):
                if name in steppers:
                    attach_cache(steppers[name].module, images, f"{root}/{name}", max_dim)
            times = {k: [] for k in steppers}
            for r in range(args.rounds + 1):
                for name, stepper in steppers.items():
                    start = time.perf_counter()
                    stepper.step(images[index + (r % 2) * batch], index + (r % 2) * batch)
                    if r:  # round 0 warms up
                        times[name].append(time.perf_counter() - start)
            med = {k: statistics.median(v) for k, v in times.items()}
            if "cached" in steppers and not args.no_pieces:
                pieces = isolated_extra_work(steppers["cached"], images[:batch], index, args.rounds)
                for name, seconds in pieces.items():
                    piece_rows.append([setting, name, f"{1e3 * seconds:.1f}", f"{seconds / med['floor']:.3f}"])
                piece_rows.append(
                    [
                        setting,
                        "1 + their sum: the cached step's ratio if nothing else cost",
                        "",
                        f"{1 + sum(pieces.values()) / med['floor']:.3f}",
                    ]
                )
        if "uncached" in steppers and not args.no_pieces:
            pieces = isolated_uncached_work(steppers["uncached"], images[:batch], args.rounds)
            extra = med["uncached"] - med["floor"]
            for name, seconds in pieces.items():
                uncached_rows.append(
                    [
                        setting,
                        name,
                        f"{1e3 * seconds:.1f}",
                        f"{seconds / med['floor']:.3f}",
                        f"{100 * seconds / extra:.1f} %",
                    ]
                )
            total = sum(pieces.values())
            uncached_rows.append(
                [
                    setting,
                    "their sum (1 + sum: the uncached step's ratio if nothing else cost)",
                    f"{1e3 * total:.1f}",
                    f"{1 + total / med['floor']:.3f}",
                    f"{100 * total / extra:.1f} %",
                ]
            )
            uncached_rows.append(
                [
                    setting,
                    "the uncached step's measured extra (median step - median floor)",
                    f"{1e3 * extra:.1f}",
                    f"{med['uncached'] / med['floor']:.3f}",
                    "100.0 %",
                ]
            )
        paired = {k: paired_ratio(v, times["floor"]) for k, v in times.items()}
        spread = {k: "%.2f-%.2f" % paired_ratio_quartiles(v, times["floor"]) for k, v in times.items()}
        for name in steppers:
            rows.append(
                [setting, labels.get(name, name), med[name], med[name] / med["floor"], paired[name], spread[name]]
            )
        if "cached" in steppers:
            data_ips, data_name = data_pipeline_images_per_s(size, batch)
            rows.append(
                [
                    setting,
                    f"data pipeline ({data_name}, 2 workers) vs cached step",
                    f"{data_ips:.0f} img/s",
                    data_ips / (batch / med["cached"]),
                    "",
                    "",
                ]
            )
        ratio[size] = paired
    print(
        format_table(
            [
                "setting",
                "variant",
                "s / step (median)",
                "x floor (medians)",
                "x floor (per round)",
                "per-round quartiles",
            ],
            rows,
        )
    )
    if uncached_rows:
        print(
            "\nThe uncached step's extra work, each piece timed alone (median), over the floor's median step and "
            "as a share of the uncached step's measured extra time:"
        )
        print(format_table(["setting", "piece", "ms", "x floor", "share of the extra"], uncached_rows))
    if piece_rows:
        print("\nThe cached step's extra work, each piece timed alone (median), over the floor's median step:")
        print(format_table(["setting", "piece", "ms", "x floor"], piece_rows))
    headline = ratio[HEADLINE_SIZE if HEADLINE_SIZE in ratio else max(ratio)]
    for name, text in (("uncached", "uncached step / floor"), ("cached", "full cached step / floor")):
        if name in headline:
            print(f"{text} = {headline[name]:.2f}")


if __name__ == "__main__":
    main()
