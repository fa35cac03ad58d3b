"""Images/s of the ``custom`` x' view: mvmr's batched per-sample view vs a per-sample torchvision v2 loop.

    python benchmarks/views_throughput.py [--repeats 5] [--device cpu]

Both sides get uint8 (B, 3, S, S) batches and return normalised float32 (B, 3, S, S) with the same policy
(random resized crop, flip, colour jitter p=0.8, grayscale p=0.2, blur p=0.5, solarize p=0.1).
A second table times mvmr's vectorised colour jitter, grayscale, blur and solarize against kornia's per-sample
ops (the ones they replaced) on the same float batches. A third times the view on the CPU in chunks of
``CPU_CHUNK_BYTES`` (what it does by default) against one call on the whole batch, and a fourth the view with its
colour ops compiled by torch.compile (the default, ``compile_view_ops``) against the eager one; both interleaved
round by round. ``--tables 4`` prints the fourth only (any subset of 1 2 3 4).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import kornia.augmentation as K
import torch
import torchvision.transforms.v2 as T

from mvmr.cli.flags import doc_summary
from mvmr.data.views import build_train_view
from mvmr.data.views.photometric import (
    BLUR_SIGMA,
    JITTER,
    ColourJitter,
    GaussianBlur,
    RandomGrayscale,
    Solarize,
    blur_kernel_size,
)
from mvmr.data.views.policies import default_crop_scale

CASES = [(32, 256), (96, 64)]  # (size, batch)
CHUNK_CASES = [(32, 256), (64, 256), (96, 128), (128, 64), (224, 32)]  # (size, batch): x' + one copy at 96 px
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torchvision_custom(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same policy as torchvision v2 transforms on one uint8 (3, S, S) image."""
    kernel = blur_kernel_size(size)
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=default_crop_scale(size), antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(*JITTER)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(kernel, sigma=BLUR_SIGMA)], p=0.5),
            T.RandomSolarize(threshold=128, p=0.1),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(MEAN, STD),
        ]
    )


def images_per_second(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, repeats: int) -> float:
    """Median throughput over ``repeats`` timed batches, after one warm-up batch."""
    run(images)
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run(images)
        sync()
        times.append(time.perf_counter() - start)
    return images.shape[0] / sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="device of the mvmr view (the torchvision loop runs on CPU)")
    parser.add_argument("--tables", type=int, nargs="+", choices=(1, 2, 3, 4), default=[1, 2, 3, 4])
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch threads: {torch.get_num_threads()}, mvmr view on {args.device}")
    if 1 in args.tables:
        throughput_against_torchvision(args)
    if 2 in args.tables:
        ops_against_kornia(args)
    if 3 in args.tables and args.device == "cpu":
        chunked_against_whole(args)
    if 4 in args.tables:
        compiled_against_eager(args)


def throughput_against_torchvision(args: argparse.Namespace) -> None:
    print(f"{'size':>5} {'batch':>6} {'mvmr img/s':>12} {'torchvision loop img/s':>23} {'ratio':>7}")
    for size, batch in CASES:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        view = build_train_view("custom", size, MEAN, STD, 3).to(args.device)
        per_sample = torchvision_custom(size)
        ours = images_per_second(view, images.to(args.device), args.repeats)
        loop = images_per_second(lambda x: torch.stack([per_sample(image) for image in x]), images, args.repeats)
        print(f"{size:>5} {batch:>6} {ours:>12.0f} {loop:>23.0f} {ours / loop:>6.1f}x")


def ops_against_kornia(args: argparse.Namespace) -> None:
    print(f"\n{'size':>5} {'batch':>6} {'op':>10} {'mvmr img/s':>12} {'kornia img/s':>13} {'ratio':>7}")
    for size, batch in CASES:
        images = torch.rand(batch, 3, size, size, device=args.device)
        kernel = blur_kernel_size(size)
        pairs = {
            "jitter": (ColourJitter(*JITTER, p=0.8), K.ColorJitter(*JITTER, p=0.8)),
            "blur": (
                GaussianBlur(kernel, BLUR_SIGMA, p=0.5),
                K.RandomGaussianBlur((kernel, kernel), BLUR_SIGMA, border_type="reflect", p=0.5),
            ),
            "grayscale": (RandomGrayscale(p=0.2), K.RandomGrayscale(p=0.2)),
            "solarize": (Solarize(p=0.1), K.RandomSolarize(thresholds=0.0, additions=0.0, p=0.1)),
        }
        for name, (mine, theirs) in pairs.items():
            ours = images_per_second(mine.to(args.device), images, args.repeats)
            kornia = images_per_second(theirs.to(args.device), images, args.repeats)
            print(f"{size:>5} {batch:>6} {name:>10} {ours:>12.0f} {kornia:>13.0f} {ours / kornia:>6.1f}x")


def chunked_against_whole(args: argparse.Namespace) -> None:
    print(f"\n{'size':>5} {'batch':>6} {'chunk':>6} {'chunked ms':>11} {'one call ms':>12} {'speed-up':>9}")
    for size, batch in CHUNK_CASES:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        chunked = build_train_view("custom", size, MEAN, STD, 3)
        whole = build_train_view("custom", size, MEAN, STD, 3)
        whole.chunk_bytes = 0
        ms = interleaved_ms({"chunked": chunked, "whole": whole}, images, args.repeats)
        print(
            f"{size:>5} {batch:>6} {chunked.chunk_size(images):>6} {ms['chunked']:>11.1f} {ms['whole']:>12.1f} "
            f"{ms['whole'] / ms['chunked']:>8.2f}x"
        )


def compiled_against_eager(args: argparse.Namespace) -> None:
    print(f"\n{'size':>5} {'batch':>6} {'compiled ms':>12} {'eager ms':>9} {'speed-up':>9}")
    for size, batch in CHUNK_CASES:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=args.device)
        views = {
            compiled: build_train_view("custom", size, MEAN, STD, 3, compile_ops=compiled).to(args.device)
            for compiled in (True, False)
        }
        ms = interleaved_ms(views, images, args.repeats)
        print(f"{size:>5} {batch:>6} {ms[True]:>12.1f} {ms[False]:>9.1f} {ms[False] / ms[True]:>8.2f}x")


def interleaved_ms(runs: dict, images: torch.Tensor, rounds: int) -> dict:
    """Median ms per call of each of ``runs`` on ``images``, the runs interleaved round by round (round 0, which
    also compiles, is not timed)."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    times = {name: [] for name in runs}
    for r in range(rounds + 1):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            run(images)
            sync()
            if r:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(spent) * 1e3 for name, spent in times.items()}


if __name__ == "__main__":
    main()
