"""The training views move the parameters they draw on the CPU to the images' device without a blocking copy (one
from pageable memory synchronises the CUDA stream, so the CPU would wait for the GPU once per op and step), in few
copies, and their outputs are bitwise those of plain blocking copies.

On the CPU ``.to("cpu")`` does nothing, so the recorder judges each ``Tensor.to`` / ``Tensor.cuda`` call made by
mvmr's code by its arguments: a CPU tensor sent to a named device without ``non_blocking=True`` would block on CUDA.
(kornia's own calls, inside the randaugment / autoaugment branches, are kornia's business and not recorded.)"""

import traceback
from pathlib import Path

import pytest
import torch

import mvmr
from mvmr.data.views import VIEW_POLICIES, build_train_view

PACKAGE = Path(mvmr.__file__).parent

MEAN = {1: [0.4], 3: [0.485, 0.456, 0.406]}
STD = {1: [0.3], 3: [0.229, 0.224, 0.225]}
CASES = [(policy, channels) for policy in VIEW_POLICIES.names() for channels in (1, 3)]


def parse_to(args, kwargs):
    """(device named or None, non_blocking) of a ``Tensor.to`` call in any of its forms: (device, dtype,
    non_blocking, copy), (dtype, non_blocking, copy), (other tensor, non_blocking, copy)."""
    device, rest = kwargs.get("device"), list(args)
    if rest and isinstance(rest[0], torch.Tensor):
        device = rest.pop(0).device
    elif rest and (rest[0] is None or isinstance(rest[0], (str, torch.device)) or type(rest[0]) is int):
        device = rest.pop(0)
        if rest and (rest[0] is None or isinstance(rest[0], torch.dtype)):
            rest.pop(0)
    elif rest and isinstance(rest[0], torch.dtype):
        rest.pop(0)
    return device, bool(kwargs.get("non_blocking", rest[0] if rest else False))


class CopyRecorder:
    """Records every host-to-device copy mvmr's code would make on CUDA: ``(where, blocking)``. Module buffers in
    ``exempt`` (the normalisation constants, the erasing fill) move with ``view.to(device)`` and are not counted."""

    def __init__(self, monkeypatch):
        self.copies, self.exempt = [], set()
        to, cuda = torch.Tensor.to, torch.Tensor.cuda

        def record_to(tensor, *args, **kwargs):
            device, non_blocking = parse_to(args, kwargs)
            if device is not None and tensor.device.type == "cpu" and id(tensor) not in self.exempt:
                self.record(not non_blocking)
            return to(tensor, *args, **kwargs)

        def record_cuda(tensor, *args, **kwargs):
            self.record(not kwargs.get("non_blocking", args[1] if len(args) > 1 else False))
            return cuda(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", record_to)
        monkeypatch.setattr(torch.Tensor, "cuda", record_cuda)

    def record(self, blocking: bool) -> None:
        frame = traceback.extract_stack(limit=3)[0]  # the caller of Tensor.to / Tensor.cuda
        if Path(frame.filename).is_relative_to(PACKAGE):
            self.copies.append((f"{Path(frame.filename).relative_to(PACKAGE)}:{frame.lineno}", blocking))

    @property
    def blocking(self) -> list[str]:
        return [where for where, blocking in self.copies if blocking]


def uint8_batch(channels, seed=0):
    return torch.randint(0, 256, (6, channels, 28, 26), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)


def policy_view(policy, channels):
    """The policy's training view at 24 px (blur kernel 3 for 'custom' and 'authors') with random erasing."""
    return build_train_view(policy, 24, MEAN[channels], STD[channels], channels, erase_p=0.5, compile_ops=False)


def test_parse_to_reads_every_form():
    assert parse_to(("cpu",), {}) == ("cpu", False)
    assert parse_to((torch.device("cpu"), torch.float64, True), {}) == (torch.device("cpu"), True)
    assert parse_to((torch.float64,), {"non_blocking": True}) == (None, True)
    assert parse_to((), {"device": "cpu", "dtype": torch.float64}) == ("cpu", False)
    assert parse_to((torch.zeros(1), True), {}) == (torch.device("cpu"), True)
    assert parse_to((0,), {"non_blocking": False}) == (0, False)


@pytest.mark.parametrize("policy, channels", CASES)
def test_training_views_make_no_blocking_copies(monkeypatch, policy, channels):
    """Every copy of drawn parameters is non-blocking, and there are few: at most one per op of mvmr's (before, the
    jitter with a per-sample order made up to 32)."""
    view = policy_view(policy, channels)
    images = uint8_batch(channels)
    recorder = CopyRecorder(monkeypatch)
    recorder.exempt = {id(buffer) for buffer in view.buffers()}
    torch.manual_seed(0)
    for _ in range(3):
        view(images)
    assert recorder.blocking == [], f"blocking copies on CUDA at {sorted(set(recorder.blocking))}"
    ops = [op for op in view.augment.modules() if type(op).__module__.startswith("mvmr.")]
    assert len(recorder.copies) <= 3 * len(ops), recorder.copies


@pytest.mark.parametrize("policy, channels", CASES)
def test_packed_copies_leave_the_views_bitwise_unchanged(monkeypatch, policy, channels):
    """The same seed gives the same bits as one plain blocking ``.to(device)`` per tensor (the views before the
    packing): the packed copy neither changes a value nor the random draws."""
    from mvmr.data.views import erasing, geometric, photometric, resample

    images = uint8_batch(channels)
    torch.manual_seed(1)
    packed = [policy_view(policy, channels)(images) for _ in range(2)]
    for module in (erasing, geometric, photometric, resample):
        monkeypatch.setattr(module, "to_device", lambda device, *tensors: tuple(t.to(device) for t in tensors))
    torch.manual_seed(1)
    plain = [policy_view(policy, channels)(images) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(packed, plain))


def test_to_device_packs_cpu_tensors_into_one_non_blocking_copy(monkeypatch):
    """Any dtype and shape (0-d, empty) comes back exactly, each at a ``PACK_ALIGN``-byte offset, from one
    non-blocking copy; on another device ('meta': no data, no CUDA needed) too."""
    from mvmr.data.views.tensors import PACK_ALIGN, to_device

    tensors = (
        torch.rand(5) < 0.5,
        torch.rand(3, 4),
        torch.arange(7),
        torch.tensor(2.5, dtype=torch.float64),
        torch.empty(0, 2),
        torch.randint(0, 255, (3,), dtype=torch.uint8),
    )
    recorder = CopyRecorder(monkeypatch)
    moved = to_device(torch.device("cpu"), *tensors)
    assert [blocking for _, blocking in recorder.copies] == [False]
    assert all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) for a, b in zip(tensors, moved))
    assert all(t.storage_offset() * t.element_size() % PACK_ALIGN == 0 for t in moved)
    on_meta = to_device("meta", *tensors)
    assert [(t.device.type, t.dtype, t.shape) for t in on_meta] == [("meta", t.dtype, t.shape) for t in tensors]
    assert len(recorder.copies) == 2 and not recorder.blocking
    assert to_device("cpu", tensors[1])[0] is tensors[1]  # one tensor: moved as it is
