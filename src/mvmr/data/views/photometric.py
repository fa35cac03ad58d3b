"""Per-sample colour and policy augmentations (kornia, and vectorised jitter / blur / solarize), on float images in
[0, 1].

kornia draws factors and gates per sample, but its RandAugment / AutoAugment pick the operations once per
batch; ``PerSampleChoice`` makes that choice per sample by running each kornia branch on its own samples.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from kornia.augmentation.auto import AutoAugment, RandAugment
from kornia.augmentation.auto.autoaugment.autoaugment import cifar10_policy, imagenet_policy
from kornia.augmentation.auto.rand_augment.rand_augment import default_policy as rand_augment_ops
from torch import nn

from mvmr.compiled import CompiledOrEager
from mvmr.data.views.tensors import to_device
from mvmr.errors import ConfigError

JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue at strength 1
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 0.5


def blur_kernel_size(size: int) -> int:
    """Gaussian-blur kernel for ``size`` pixels: 10% of the side, made odd, at least 3 (224 -> 23, 96 -> 9)."""
    kernel = max(3, int(0.1 * size))
    return kernel if kernel % 2 else kernel + 1


def authors_blur_kernel_size(size: int) -> int:
    """The authors' blur kernel, 2 int(0.05 size) + 1 (224 -> 23, 96 -> 9, 32 -> 3, below 20 -> 1: no blur);
    the authors' AugTransform policy 'custom', vkinakh/mv-mr src/transform/transform.py."""
    return 2 * int(0.05 * size) + 1


GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's luma weights for contrast and saturation


def _luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) grey levels with ``GREY_WEIGHTS``."""
    r, g, b = images.unbind(1)
    return (GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * images + (1 - factor) * other, clamped to [0, 1]; factor (B,) per sample."""
    factor = factor.view(-1, 1, 1, 1)
    return (factor * images + (1 - factor) * other).clamp_(0.0, 1.0)


def _shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (B, 3, H, W) RGB in [0, 1] by ``shift`` (B,) turns, keeping HSV's value and saturation
    (torchvision's ``adjust_hue``) without building the HSV image: with M = max, C = max - min and the hue in
    sixths h6 in [0, 6) (red, then green, wins ties of the max), channel n of (R, G, B) is
    M - C clamp(min(k, 4 - k), 0, 1), k = (n' + h6 + 6 shift) mod 6, n' = 5, 3, 1: fewer full-size temporaries than
    the round trip through an HSV tensor."""
    r, g, b = images.unbind(1)
    top = torch.maximum(torch.maximum(r, g), b)
    chroma = top - torch.minimum(torch.minimum(r, g), b)
    safe_chroma = chroma + (chroma == 0)  # grey pixels: r = g = b, so the red branch gives hue 0
    is_r = top == r
    is_g = (top == g) & ~is_r
    is_b = ~(is_r | is_g)
    sixths = (is_r * (g - b) + is_g * (b - r + 2.0 * safe_chroma) + is_b * (r - g + 4.0 * safe_chroma)) / safe_chroma
    sixths = sixths + 6.0 * shift.view(-1, 1, 1)  # in [-4, 9)
    sixths = sixths - 6.0 * torch.floor(sixths / 6.0)  # in [0, 6)
    k = torch.stack((sixths + 5.0, sixths + 3.0, sixths + 1.0), 1)  # in [1, 11): one subtraction of 6 wraps it
    k = k - 6.0 * (k >= 6.0)
    return top.unsqueeze(1) - chroma.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def _brighten(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_brightness`` per sample: images * factor (B,), clamped to [0, 1]."""
    return (images * factor.view(-1, 1, 1, 1)).clamp(0.0, 1.0)


def _contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_contrast`` per sample: a blend with the image's mean grey level."""
    grey = _luma(images) if images.shape[1] == 3 else images
    return _blend(images, grey.mean(dim=(1, 2, 3), keepdim=True), factor)


def _saturate(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_saturation`` per sample: a blend with the grey image (3 channels)."""
    return _blend(images, _luma(images), factor)


# The jitter's steps: (B, C, H, W) images, (B,) factors -> (B, C, H, W).
JITTER_STEPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": _brighten,
    "contrast": _contrast,
    "saturation": _saturate,
    "hue": _shift_hue,
}
# The same formulas, each fused by torch.compile into one or two kernels instead of one pass over the batch per
# elementwise op (the hue step: about 25 passes -> 1). Compiled lazily, once per step for all shapes; eager if
# compiling fails (``CompiledOrEager``).
COMPILED_JITTER_STEPS = {name: CompiledOrEager(step) for name, step in JITTER_STEPS.items()}


JITTER_ORDER = ("brightness", "contrast", "saturation", "hue")  # the step indices of a per-sample order


class ColourJitter(nn.Module):
    """torchvision's ColorJitter with every factor drawn per sample: brightness, contrast, saturation
    ~ U(max(0, 1 - m), 1 + m), hue shift ~ U(-m, m); the order of the steps is drawn once per call (as kornia
    does; torchvision draws it per image, which ``order_per_sample`` gives) and each sample is jittered with
    probability ``p``. Zero magnitudes are skipped; 1-channel images get brightness and contrast only.
    (B, C, H, W) in [0, 1] -> same.

    Written for speed: kornia's per-sample ColorJitter is slower on the CPU (``benchmarks/views_throughput.py``
    times both side by side). ``compiled``: the steps run through ``COMPILED_JITTER_STEPS`` (the same formulas
    fused by torch.compile, eager if compiling fails); False: the plain ``JITTER_STEPS``."""

    def __init__(
        self,
        brightness: float,
        contrast: float,
        saturation: float,
        hue: float,
        p: float = 1.0,
        compiled: bool = True,
        order_per_sample: bool = False,
    ):
        super().__init__()
        if not 0 <= hue <= 0.5 or min(brightness, contrast, saturation) < 0:
            raise ConfigError(
                f"colour jitter magnitudes must be >= 0 and hue <= 0.5; got brightness={brightness}, "
                f"contrast={contrast}, saturation={saturation}, hue={hue}"
            )
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p
        self.compiled, self.order_per_sample = compiled, order_per_sample

    def extra_repr(self) -> str:
        return (
            f"brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, "
            f"hue={self.hue}, p={self.p}, compiled={self.compiled}, order_per_sample={self.order_per_sample}"
        )

    def draw(self, batch: int, channels: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str] | torch.Tensor]:
        """(gate (B,) bool, factors name -> (B,), order), from the global CPU generator; the order is the list of
        the enabled steps' names, or with ``order_per_sample`` a (B, 4) permutation of ``JITTER_ORDER``'s indices
        per sample (disabled steps are skipped when applied)."""
        gate = torch.rand(batch) < self.p
        factors = {}
        for name in ("brightness", "contrast", "saturation"):
            m = getattr(self, name)
            if m > 0 and (channels == 3 or name != "saturation"):
                factors[name] = torch.empty(batch).uniform_(max(0.0, 1.0 - m), 1.0 + m)
        if self.hue > 0 and channels == 3:
            factors["hue"] = torch.empty(batch).uniform_(-self.hue, self.hue)
        if self.order_per_sample:
            return gate, factors, torch.rand(batch, len(JITTER_ORDER)).argsort(dim=1)
        steps = JITTER_ORDER
        order = [steps[i] for i in torch.randperm(4).tolist() if steps[i] in factors]
        return gate, factors, order

    @staticmethod
    def apply(
        images: torch.Tensor,
        gate: torch.Tensor,
        factors: dict[str, torch.Tensor],
        order: list[str] | torch.Tensor,
        steps: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = JITTER_STEPS,
    ) -> torch.Tensor:
        """Jitter the gated samples of ``images`` with the given factors, steps in ``order`` (a list of names, or
        (B, 4) indices into ``JITTER_ORDER`` per sample: see ``draw``), each step ``steps[name]`` (the eager
        formulas by default)."""
        if isinstance(order, torch.Tensor):
            return ColourJitter._apply_per_sample_order(images, gate, factors, order, steps)
        gate, *moved = to_device(images.device, gate, *(factors[name] for name in order))
        out = images
        for name, factor in zip(order, moved):  # copy=True: a compiled step takes its factor at offset 0, see to_device
            out = steps[name](out, factor.to(images.dtype, copy=True))
        return torch.where(gate.view(-1, 1, 1, 1), out, images)

    @staticmethod
    def _apply_per_sample_order(
        images: torch.Tensor,
        gate: torch.Tensor,
        factors: dict[str, torch.Tensor],
        order: torch.Tensor,
        steps: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
    ) -> torch.Tensor:
        """``apply`` with a (B, 4) order: at each position every step runs once, on the gated samples that have it
        there (at most 16 calls on parts of the batch, about the work of 4 calls on the gated samples). Which samples
        each call takes, and their factors, are worked out on the CPU first and reach the device in one copy."""
        calls = [  # (step name, its samples) in the order they run
            (name, (gate & (order[:, position] == index)).nonzero()[:, 0])
            for position in range(order.shape[1])
            for index, name in enumerate(JITTER_ORDER)
            if name in factors
        ]
        out = images.clone()
        if not calls:
            return out
        sizes = [len(members) for _, members in calls]
        members, factor = to_device(
            images.device,
            torch.cat([members for _, members in calls]),
            torch.cat([factors[name][members] for name, members in calls]),
        )
        for (name, _), rows, values in zip(calls, members.split(sizes), factor.split(sizes)):
            if len(rows):  # copy=True: a compiled step takes its factors at offset 0, see to_device
                out.index_copy_(0, rows, steps[name](out.index_select(0, rows), values.to(images.dtype, copy=True)))
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        gate, factors, order = self.draw(images.shape[0], images.shape[1])
        if not gate.any() or not factors:
            return images
        return self.apply(images, gate, factors, order, COMPILED_JITTER_STEPS if self.compiled else JITTER_STEPS)


def _to_grey(images: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W): the gated samples (gate (B, 1, 1, 1) bool) replaced by their grey level on all channels."""
    return torch.where(gate, _luma(images), images)


def _solarize(images: torch.Tensor, gate: torch.Tensor, threshold: float) -> torch.Tensor:
    """In the gated samples (gate (B, 1, 1, 1) bool), pixels >= ``threshold`` become 1 - x."""
    return torch.where(gate & (images >= threshold), 1.0 - images, images)


to_grey_compiled = CompiledOrEager(_to_grey)
solarize_compiled = CompiledOrEager(_solarize)


class RandomGrayscale(nn.Module):
    """Per sample with probability ``p``: RGB -> grey level (``GREY_WEIGHTS``, torchvision's ``rgb_to_grayscale``)
    on all three channels. (B, 3, H, W) -> same. One fused pass (``compiled``) instead of kornia's per-sample
    parameter machinery."""

    def __init__(self, p: float, compiled: bool = True):
        super().__init__()
        self.p, self.compiled = p, compiled

    def extra_repr(self) -> str:
        return f"p={self.p}, compiled={self.compiled}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != 3:
            raise ValueError(f"grayscale needs RGB images (B, 3, H, W); got {tuple(images.shape)}")
        gate = to_device(images.device, torch.rand(images.shape[0]) < self.p)[0].view(-1, 1, 1, 1)
        return (to_grey_compiled if self.compiled else _to_grey)(images, gate)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) standard deviations -> (B, size) normalised 1-D Gaussian taps at offsets -(size // 2) .. size // 2
    (torchvision's and kornia's kernel for odd ``size``)."""
    offsets = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - size // 2
    taps = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    return taps / taps.sum(1, keepdim=True)


class GaussianBlur(nn.Module):
    """Per sample with probability ``p``: a separable Gaussian blur, ``kernel`` taps (odd), sigma ~ U(``sigma``),
    reflect padding (torchvision's ``GaussianBlur`` on each image). (B, C, H, W) -> same.

    One depthwise convolution per axis over the gated samples, every channel of a sample with its own sigma
    (``benchmarks/views_throughput.py`` times it against kornia's ``RandomGaussianBlur``)."""

    def __init__(self, kernel: int, sigma: tuple[float, float] = BLUR_SIGMA, p: float = 0.5):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0 or not 0 < sigma[0] <= sigma[1]:
            raise ConfigError(f"blur kernel must be odd and sigma 0 < lo <= hi; got kernel={kernel}, sigma={sigma}")
        self.kernel, self.sigma, self.p = kernel, tuple(sigma), p

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, sigma={self.sigma}, p={self.p}"

    def draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate (B,) bool, sigma (B,)), from the global CPU generator."""
        gate = torch.rand(batch) < self.p
        return gate, torch.empty(batch).uniform_(*self.sigma)

    def apply(self, images: torch.Tensor, gate: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Blur the gated samples of ``images`` with their ``sigma``; the others are returned untouched. A 1-tap
        kernel is the identity (its one normalised tap is 1): ``images`` come back as they are."""
        members = gate.nonzero()[:, 0]
        if len(members) == 0 or self.kernel == 1:
            return images
        members, sigma = to_device(images.device, members, sigma[members])
        picked = images.index_select(0, members)
        batch, channels, height, width = picked.shape
        taps = gaussian_kernels(sigma.to(images.dtype), self.kernel)
        taps = taps.repeat_interleave(channels, 0)  # (B * C, kernel): one filter per channel of each sample
        half = self.kernel // 2
        flat = F.pad(picked.reshape(1, batch * channels, height, width), (half, half, half, half), mode="reflect")
        flat = F.conv2d(flat, taps.view(-1, 1, self.kernel, 1), groups=batch * channels)
        flat = F.conv2d(flat, taps.view(-1, 1, 1, self.kernel), groups=batch * channels)
        return images.index_copy(0, members, flat.view(batch, channels, height, width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        gate, sigma = self.draw(images.shape[0])
        return self.apply(images, gate, sigma)


class Solarize(nn.Module):
    """Per sample with probability ``p``: pixels >= ``threshold`` become 1 - x. (B, C, H, W) in [0, 1] -> same.
    ``compiled``: one fused pass (torch.compile, eager if compiling fails)."""

    def __init__(self, p: float, threshold: float = SOLARIZE_THRESHOLD, compiled: bool = True):
        super().__init__()
        self.p, self.threshold, self.compiled = p, threshold, compiled

    def extra_repr(self) -> str:
        return f"p={self.p}, threshold={self.threshold}, compiled={self.compiled}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        gate = to_device(images.device, torch.rand(images.shape[0]) < self.p)[0].view(-1, 1, 1, 1)
        return (solarize_compiled if self.compiled else _solarize)(images, gate, self.threshold)


def colour_ops(
    size: int,
    channels: int,
    strength: float = 1.0,
    p_jitter: float = 0.8,
    p_grayscale: float = 0.2,
    p_blur: float = 0.5,
    p_solarize: float = 0.1,
) -> nn.Sequential:
    """Colour jitter (magnitudes ``JITTER`` x strength), grayscale, Gaussian blur, solarize; each op on a random
    subset of the batch (probability p per sample), factors drawn per sample. 1-channel images get brightness and
    contrast only (no saturation, hue or grayscale). (B, C, size, size) -> same, in [0, 1].

    All four are this module's vectorised ops (``ColourJitter``, ``RandomGrayscale``, ``GaussianBlur``,
    ``Solarize``: the same formulas as torchvision, tested against it, faster than kornia's on the CPU).
    Jitter, grayscale and solarize run fused by torch.compile by default (their ``compiled`` switch, set by
    ``build_train_view``'s ``compile_ops``; eager if compiling fails); the blur is a depthwise convolution (a
    compiled shifted-sum blur was not faster at every size: benchmarks/results/speed.md).
    """
    ops = jitter_grayscale_ops(channels, [m * strength for m in JITTER], p_jitter, p_grayscale)
    kernel = blur_kernel_size(size)
    if p_blur > 0 and kernel // 2 >= size:  # reflect padding needs more pixels than half the kernel
        raise ConfigError(
            f"the blur of the colour ops needs images of at least {kernel // 2 + 1} pixels; "
            f"dataset.size is {size}: raise it or use dataset.aug_policy=crop / cifar"
        )
    ops += [GaussianBlur(kernel, BLUR_SIGMA, p=p_blur), Solarize(p=p_solarize)]
    return nn.Sequential(*ops)


def jitter_grayscale_ops(
    channels: int, magnitudes: Sequence[float], p_jitter: float, p_grayscale: float, order_per_sample: bool = False
) -> list[nn.Module]:
    """[ColourJitter(brightness, contrast, saturation, hue = ``magnitudes``, hue capped at 0.5, p=``p_jitter``),
    RandomGrayscale(``p_grayscale``)] for 3 channels; for 1 channel the jitter's brightness and contrast only and
    no grayscale (torchvision leaves 'L' images' saturation, hue and grayscale alone)."""
    brightness, contrast, saturation, hue = magnitudes
    if channels == 3:
        return [
            ColourJitter(
                brightness, contrast, saturation, min(hue, 0.5), p=p_jitter, order_per_sample=order_per_sample
            ),
            RandomGrayscale(p=p_grayscale),
        ]
    return [ColourJitter(brightness, contrast, 0.0, 0.0, p=p_jitter, order_per_sample=order_per_sample)]


class PerSampleChoice(nn.Module):
    """Apply ``picks`` distinct branches, chosen uniformly and independently for every sample, one after the
    other (RandAugment's n ops; AutoAugment's one sub-policy). (B, C, H, W) -> (B, C, H, W).

    Each branch runs once on the samples that chose it, so per-sample choice costs at most
    picks x len(branches) branch calls.
    """

    def __init__(self, branches: Sequence[nn.Module], picks: int = 1):
        super().__init__()
        if not 1 <= picks <= len(branches):
            raise ConfigError(f"cannot pick {picks} distinct operations out of {len(branches)}")
        self.branches = nn.ModuleList(branches)
        self.picks = picks

    def draw(self, batch: int) -> torch.Tensor:
        """(B, picks) branch indices, distinct within a row (CPU, global generator)."""
        return torch.rand(batch, len(self.branches)).argsort(dim=1)[:, : self.picks]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        choice = self.draw(images.shape[0])
        calls = [  # (branch, its samples) in the order they run
            (branch, (choice[:, step] == index).nonzero()[:, 0])
            for step in range(self.picks)
            for index, branch in enumerate(self.branches)
        ]
        samples = to_device(images.device, torch.cat([members for _, members in calls]))[0]  # one copy for all
        out = images.clone()
        for (branch, _), rows in zip(calls, samples.split([len(members) for _, members in calls])):
            if len(rows):
                out[rows] = branch(out[rows])
        return out


class OnThreeChannels(nn.Module):
    """Run an RGB-only ``module`` on 1-channel images by repeating them to 3 channels and keeping the first
    (grey stays grey under every policy op, so the channels stay equal). 3-channel input passes straight."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 3:
            return self.module(images)
        return self.module(images.repeat(1, 3, 1, 1))[:, :1]


def rand_augment(n: int = 2, magnitude: int = 10) -> nn.Module:
    """kornia's RandAugment (its default 15 ops, magnitude m/30 of each range), with the n distinct ops drawn per
    sample instead of per batch. Works on 1 and 3 channels (1 via ``OnThreeChannels``)."""
    branches = [RandAugment(n=1, m=magnitude, policy=[op]) for op in rand_augment_ops]
    return OnThreeChannels(PerSampleChoice(branches, picks=n))


def auto_augment(size: int) -> nn.Module:
    """kornia's AutoAugment, policy 'cifar10' for size <= 64 else 'imagenet', with the sub-policy drawn per sample
    instead of per batch. Works on 1 and 3 channels (1 via ``OnThreeChannels``)."""
    policy = cifar10_policy if size <= 64 else imagenet_policy
    return OnThreeChannels(PerSampleChoice([AutoAugment(policy=[sub]) for sub in policy]))


COMPILABLE_OPS = (ColourJitter, RandomGrayscale, Solarize)  # the ops with a ``compiled`` switch
