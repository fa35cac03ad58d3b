"""The seed-named STL10 and ImageNet configs on one GPU, on synthetic data in their real formats: step time, its
ratio to the encoder-only floor, peak GPU memory and the loader's images/s, written to benchmarks/results/.

    python benchmarks/gpu_check.py [--steps 200] [--out benchmarks/results]

- STL10: configs/stl10_self_supervised.yaml as it is (ResNet-50 with the 3x3 stem, projector 8192-8192-8192,
  batch 256, bf16 or fp16, the authors' five representations, the cache), on a synthetic STL10 binary tree.
- ImageNet: configs/imagenet_self_supervised.yaml (224 px, the five computed every step, crops in the loader)
  on synthetic JPEGs in train/<wnid>/ folders; accumulation is set to 1 so that each batch is a step.
Each is run twice: as configured, and with no representation term (the floor). A step's time is the mean over the
steps after the first ``--warmup`` (the GPU synchronised only at the window's two ends); the host-device
synchronisations inside one training step are counted too. A numerics table follows: each STL10 representation
and its dCor term computed on the device under the training run's float32 settings against the CPU (φ in
float32, dCor in float64), which shows that no TF32 or half-precision product reaches them on that GPU.
``--tiny`` shrinks everything (width-8 network, a few steps) so that the script runs on a CPU in the test suite;
its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

from mvmr.cli.flags import doc_summary, int_at_least
from mvmr.config import PretrainConfig, load_config
from mvmr.data import MVMRDataModule
from mvmr.hardware import resolve_precision
from mvmr.losses import distance_correlation
from mvmr.methods.callbacks import build_callbacks
from mvmr.methods.pretrain import MVMRPretrainModule
from mvmr.representations import build_representation
from mvmr.tables import format_table
from mvmr.training import RunDir, build_trainer, configure_runtime

ROOT = Path(__file__).resolve().parents[1]
NUMERICS_TOLERANCE = 1e-4  # float32 rounding gives ~1e-6 here; a TF32 product (10-bit mantissa) gives ~1e-3
TINY = [
    "encoder.width=8",
    "encoder.out_dim=32-32-32",
    "batch_size=8",
    "n_workers=0",
    "fp16=false",
    "compile_view_ops=false",
    "dataset.size=32",
    "scatnet.shape=[32, 32]",
]


class StepTimer(pl.Callback):
    """Mean wall-clock seconds per training step over the steps after ``warmup``, with the GPU synchronised only at
    the two ends of that window (a synchronisation per step would stop the CPU from queueing the next step's
    kernels ahead, which is what a real run does); and the host-device synchronisations inside one training step
    after the warm-up (torch's sync debug mode, CUDA only; None elsewhere)."""

    def __init__(self, warmup: int, steps: int):
        if not 1 <= warmup < steps:
            raise ValueError(f"the timed window needs 1 <= warmup < steps, got warmup {warmup}, steps {steps}")
        self.warmup, self.steps, self.step_s, self.syncs = warmup, steps, float("nan"), None
        self._seen, self._start, self._caught = 0, 0.0, None

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._seen == self.warmup and torch.cuda.is_available():  # the first timed step: count its syncs
            self._caught = warnings.catch_warnings(record=True)
            self._records = self._caught.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._caught is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._caught.__exit__(None, None, None)
            self.syncs = sum("synchroniz" in str(w.message) for w in self._records)
            self._caught = None
        self._seen += 1
        if self._seen == self.warmup:
            self._sync()
            self._start = time.perf_counter()
        elif self._seen == self.steps:  # the window's end: before Lightning's end-of-training work (checkpoints)
            self._sync()
            self.step_s = (time.perf_counter() - self._start) / (self.steps - self.warmup)


def write_stl10(folder: Path, n: int, seed: int = 0) -> None:
    """A synthetic ``stl10_binary`` tree: ``n`` unlabelled, n // 10 labelled train and test images (96 x 96)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("unlabeled", n), ("train", max(10, n // 10)), ("test", max(10, n // 10))):
        images = rng.integers(0, 256, size=(count, 3, 96, 96), dtype=np.uint8)  # channel-major, column-major
        (folder / f"{name}_X.bin").write_bytes(images.tobytes())
        if name != "unlabeled":
            (folder / f"{name}_y.bin").write_bytes((np.arange(count) % 10 + 1).astype(np.uint8).tobytes())


def write_imagenet(folder: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    """Synthetic JPEGs (quality 90, ImageNet-like sizes) in train/<wnid>/ and val/<wnid>/."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", max(classes, n // 10))):
        for i in range(count):
            width, height = (max(160, int(v)) for v in (rng.normal(400, 80), rng.normal(350, 70)))
            coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
            path = folder / split / f"n{i % classes:08d}" / f"{split}_{i:06d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(coarse).resize((width, height), Image.BICUBIC).save(path, quality=90)


def loader_images_per_s(datamodule: MVMRDataModule, batches: int) -> float:
    """Images/s of the training loader alone over ``batches`` batches (after its first)."""
    iterator = iter(datamodule.train_dataloader())
    next(iterator)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            seen += len(next(iterator)[0])
        except StopIteration:
            break
    return seen / max(time.perf_counter() - start, 1e-9)


def fit_and_time(config: str, overrides: list[str], run_dir: Path, name: str, steps: int, warmup: int) -> dict:
    """Train ``steps`` batches of ``config``; step times, peak GPU memory, the loader's images/s."""
    cfg = load_config(
        config,
        overrides
        + [
            f"run_dir={run_dir}",
            f"name={name}",
            f"trainer.max_steps={steps}",
            "trainer.limit_val_batches=0",
            "trainer.progress_bar=false",
            "trainer.devices=1",  # one GPU even on a multi-GPU host (the configs say auto: DDP over all of them)
            "accumulate_grad_batches=1",
            "resume=false",
        ],
        schema=PretrainConfig,
    )
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = MVMRDataModule(cfg.dataset, cfg.batch_size, cfg.n_workers, seed=cfg.seed)
    datamodule.setup("fit")
    module = MVMRPretrainModule(cfg, datamodule.info)
    timer = StepTimer(warmup, steps)
    run = RunDir.for_config(cfg, None, name)
    trainer = build_trainer(
        cfg, run, monitor=None, module=module, callbacks=[timer, *build_callbacks(cfg, module, datamodule, run)]
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=datamodule)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return {
        "step_s": timer.step_s,
        "syncs": timer.syncs,
        "peak_gib": peak,
        "loader": loader_images_per_s(datamodule, 20),
        "batch": cfg.batch_size,
        "precision": cfg.trainer.precision
        or resolve_precision(cfg.fp16, "gpu" if torch.cuda.is_available() else "cpu"),
        "module": module,
    }


def numerics_rows(module: MVMRPretrainModule, device: torch.device, batch: int, seed: int = 0) -> list:
    """Per representation of ``module`` (and Gabor and DCT): the relative L2 difference of φ(x̄) computed on
    ``device`` (under the training run's float32 settings) from φ(x̄) on the CPU, and |dCor(z, φ) on ``device`` −
    dCor in float64 on the CPU|, for random normalised images x̄ and an embedding z that depends on them."""
    configure_runtime()  # what a training run sets, TF32 matrix products included
    generator = torch.Generator().manual_seed(seed)
    rows = []
    some = next(r for r in module.representations.values() if r.deterministic)
    others = {  # the convolution and matrix-product representations of the other configs
        name: build_representation(name, None, in_channels=some.in_channels, image_size=some.image_size)
        for name in ("gabor", "dct")
    }
    for key, representation in {**module.representations, **others}.items():
        if not representation.deterministic:  # a random copy (augmented_pixels): no two draws agree anyway
            continue
        shape = (batch, representation.in_channels, representation.image_size, representation.image_size)
        images = (torch.rand(shape, generator=generator) - 0.5) / 0.25
        mixing = torch.randn(images[0].numel(), 128, generator=generator, dtype=torch.float64)
        z = (images.flatten(1).double() @ mixing).tanh().float()  # an embedding that depends on x̄
        on_cpu = representation.cpu()(images)
        on_device = representation.to(device)(images.to(device)).cpu()
        representation.cpu()
        phi_error = float((on_device - on_cpu).norm() / on_cpu.norm().clamp_min(1e-30))
        reference = float(distance_correlation(z.double(), on_cpu.double()))
        dcor_error = abs(float(distance_correlation(z.to(device), on_device.to(device))) - reference)
        ok = phi_error <= NUMERICS_TOLERANCE and dcor_error <= NUMERICS_TOLERANCE
        rows.append([key, f"{phi_error:.1e}", f"{reference:.4f}", f"{dcor_error:.1e}", "ok" if ok else "CHECK"])
    return rows


def summarise(label: str, full: dict, floor: dict) -> list:
    step, base = full["step_s"], floor["step_s"]
    return [
        label,
        full["batch"],
        full["precision"],
        1000 * step,
        1000 * base,
        step / base,
        full["batch"] / step,
        full["loader"],
        full["peak_gib"],
        "n/a" if full["syncs"] is None else full["syncs"],
    ]


def run(steps: int, warmup: int, out: Path | None, tiny: bool) -> str:
    extra = TINY if tiny else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_stl = 64 if tiny else 2560
        write_stl10(tmp / "stl10" / "stl10_binary", n_stl)
        stl = str(ROOT / "configs" / "stl10_self_supervised.yaml")
        common = extra + [f"dataset.path={tmp / 'stl10'}", f"cache.dir={tmp / 'cache'}"]
        full = fit_and_time(stl, common, tmp / "runs", "stl10", steps, warmup)
        floor = fit_and_time(stl, common + ["representations=[]"], tmp / "runs", "stl10_floor", steps, warmup)
        rows.append(summarise("STL10 (cached representations)", full, floor))
        on = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        numerics = numerics_rows(full["module"], on, batch=8 if tiny else 64)
        write_imagenet(tmp / "imagenet", 24 if tiny else 2048)
        imagenet = str(ROOT / "configs" / "imagenet_self_supervised.yaml")
        common = extra + [f"dataset.path={tmp / 'imagenet'}", "dataset.n_classes=10", "dataset.val_fraction=0.05"]
        full = fit_and_time(imagenet, common, tmp / "runs", "imagenet", steps, warmup)
        floor = fit_and_time(imagenet, common + ["representations=[]"], tmp / "runs", "imagenet_floor", steps, warmup)
        rows.append(summarise("ImageNet (representations every step)", full, floor))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    table = format_table(
        [
            "config",
            "batch",
            "precision",
            "step ms",
            "floor ms",
            "step / floor",
            "images/s",
            "loader images/s",
            "peak GiB",
            "syncs / step",
        ],
        rows,
    )
    numerics_table = format_table(
        ["representation", "φ: device vs CPU (rel. L2)", "dCor(z, φ), float64 CPU", "dCor: device − CPU (abs.)", ""],
        numerics,
    )
    text = (
        f"# GPU check, {datetime.date.today()}\n\n`python benchmarks/gpu_check.py --steps {steps}` on {device}, "
        f"torch {torch.__version__}; mean step over steps {warmup + 1}-{steps} (GPU synchronised at the two ends"
        f" only); syncs / step: host-device synchronisations in one training step (torch's sync debug mode)"
        f"{' (TINY: sizes shrunk, numbers meaningless)' if tiny else ''}.\n\n{table}\n\n"
        f"Numerics on the device (tolerance {NUMERICS_TOLERANCE:g}; CHECK: something runs below float32 there):\n\n"
        f"{numerics_table}\n"
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"gpu_check_{datetime.date.today()}{'_tiny' if tiny else ''}.md").write_text(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--steps", type=int_at_least(2), default=200, help="training batches per run")
    parser.add_argument("--warmup", type=int_at_least(1), default=20, help="first steps left out of the timing")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder of the record")
    parser.add_argument("--tiny", action="store_true", help="shrunk sizes for a CPU smoke run (numbers meaningless)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print(run(args.steps, min(args.warmup, args.steps - 1), args.out, args.tiny))


if __name__ == "__main__":
    main()
