"""Disk cache of φ_k(x̄): each deterministic representation computed once per dataset, memory-mapped.

x̄ (the non-augmented view) is a fixed function of the image, so for a deterministic representation
(pixels, HOG, ScatNet, DCT, a frozen teacher, ...) φ_k(x̄) is a fixed vector per sample. ``build``
computes it in one pass over the dataset and stores an (N, d_k) array per representation; training
then reads rows by sample index instead of recomputing them.

Files, per representation key: ``<root>/<key>-<hash>.npy`` (a self-describing ``.npy`` array) and
``<root>/<key>-<hash>.json`` (metadata). ``<hash>`` covers everything the values depend on (the
caller's fingerprint, the representation, storage dtype, ``max_dim``, seed, N), so any change gives
new files. The array is written under a temporary name, flushed, renamed into place, and only then is
the metadata renamed into place: a file without its metadata is incomplete (a crashed build) and is
rebuilt, never reused.

Disk space: before computing anything, ``build`` estimates the bytes of the entries it will write
(:meth:`RepresentationCache.estimate`) and refuses with a one-line :class:`ConfigError` when they exceed
the free space of the cache folder or ``max_gb``. The array's blocks are allocated when it is created
(``posix_fallocate``) and rows are written with positioned writes (``os.pwrite``), never through a
writable memory map, so a disk that fills up anyway gives ENOSPC (the same one-line error, partial
files removed) instead of a SIGBUS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import itertools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mvmr import messages
from mvmr.errors import ConfigError, DataError, MVMRError
from mvmr.numerics import exact_float32

CACHE_FORMAT = 1
FLOAT16_LIMIT = 6e4  # |x| above this is stored as float32 (float16 overflows at 65504)
STORAGE_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}
_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_NO_SPACE = frozenset(filter(None, (errno.ENOSPC, getattr(errno, "EDQUOT", None))))
_COPY_BYTES = 64 << 20  # block size when copying rows to a float32 file


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------
def _to_json(value: Any) -> Any:
    """``json.dumps`` fallback for paths, dtypes, sets, numpy scalars and dataclasses."""
    if isinstance(value, (Path, torch.dtype, np.dtype)):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise ConfigError(
        f"cache fingerprint value {value!r} of type {type(value).__name__} is not serialisable; "
        "pass plain numbers, strings, lists or mappings"
    )


def canonical_json(material: Mapping[str, Any]) -> str:
    """``material`` as JSON with sorted keys: equal mappings give equal text."""
    return json.dumps(material, sort_keys=True, default=_to_json)


def digest(material: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()[:16]


def representation_identity(module: nn.Module) -> str:
    """Class path plus ``repr`` (memory addresses removed): what a representation shows of its settings."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}: {_MEMORY_ADDRESS.sub('', repr(module))}"


def entry_material(
    fingerprint: Mapping[str, Any],
    key: str,
    module: nn.Module,
    n_rows: int,
    dtype: torch.dtype,
    max_dim: Optional[int],
    seed: int,
) -> Dict[str, Any]:
    """Everything the cached values of representation ``key`` depend on (hashed into its file name).

    If ``fingerprint["representations"]`` is a mapping keyed by representation key, only this key's
    entry goes into this key's hash (changing HOG's parameters leaves ScatNet's cache valid); every
    other fingerprint entry (dataset, split, image size, view settings, ...) is shared by all keys.
    """
    shared = dict(fingerprint)
    per_key = shared.get("representations")
    if isinstance(per_key, Mapping):
        shared["representations"] = per_key.get(key)
    return {
        "format": CACHE_FORMAT,
        "fingerprint": shared,
        "key": key,
        "module": representation_identity(module),
        "rows": n_rows,
        "dtype": str(dtype),
        "max_dim": max_dim,
        "seed": seed if max_dim else None,
    }


# --------------------------------------------------------------------------------------------
# Seeded random projection
# --------------------------------------------------------------------------------------------
class RandomProjection:
    """x (B, D) -> x @ P (B, m), P (D, m) with i.i.d. N(0, 1/m) entries: a fixed function of (D, m, seed).

    Johnson–Lindenstrauss: pairwise distances are kept up to a factor 1 ± O(1/sqrt(m)), hence dCor
    approximately. P is generated on the CPU in blocks of ``ROWS_PER_BLOCK`` rows, block b from a
    torch generator seeded with a hash of (seed, b), so it is the same on every device and building it
    needs no scratch memory beyond one block. If P fits in ``resident_bytes`` it is kept on the device
    after the first call; otherwise its blocks are regenerated on every call (memory
    O(ROWS_PER_BLOCK·m), but each call pays for generating P again).
    """

    ROWS_PER_BLOCK = 2048

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0, resident_bytes: int = 4 << 30):
        if in_dim < 1 or out_dim < 1:
            raise ConfigError(f"random projection needs positive dimensions, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim, self.seed = in_dim, out_dim, seed
        self.resident = in_dim * out_dim * 4 <= resident_bytes
        self._matrix: Optional[torch.Tensor] = None

    def block_rows(self) -> Iterable[slice]:
        """Row ranges of P, one per block."""
        for start in range(0, self.in_dim, self.ROWS_PER_BLOCK):
            yield slice(start, min(start + self.ROWS_PER_BLOCK, self.in_dim))

    def block(self, rows: slice) -> torch.Tensor:
        """Rows ``rows`` of P: (rows, m) float32 on the CPU."""
        block_seed = np.random.SeedSequence([self.seed, rows.start // self.ROWS_PER_BLOCK]).generate_state(1, np.uint64)
        generator = torch.Generator().manual_seed(int(block_seed[0]))
        values = torch.randn(rows.stop - rows.start, self.out_dim, generator=generator)
        return values.div_(self.out_dim**0.5)

    def matrix(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The whole P (D, m) float32 on ``device``, assembled block by block."""
        out = torch.empty(self.in_dim, self.out_dim, device=device)
        for rows in self.block_rows():
            out[rows] = self.block(rows).to(device)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D) -> (B, m) float32."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"random projection expects (B, {self.in_dim}), got {tuple(x.shape)}")
        x = x.float()
        with exact_float32(x.device):  # the same projection on a GPU as on the CPU, not a TF32 one
            if self.resident:
                if self._matrix is None or self._matrix.device != x.device:
                    self._matrix = self.matrix(x.device)
                return x @ self._matrix
            out = torch.zeros(x.shape[0], self.out_dim, device=x.device)
            for rows in self.block_rows():
                out.addmm_(x[:, rows], self.block(rows).to(x.device))
            return out


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def _index_array(index: Any) -> np.ndarray:
    """Sample indices (tensor on any device, array or list) -> 1-D int64 numpy array."""
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    return np.asarray(index, dtype=np.int64).reshape(-1)


class CachedRows:
    """Rows of one cached (N, d) array by sample index: index (B,) -> (B, d) float32.

    The memory map is opened lazily and re-opened in each process (safe in DataLoader workers and
    after pickling). Distinct rows are read in sorted index order (sequential on disk), then put back
    in request order.
    The result lives on ``index``'s device when ``index`` is a tensor, else on the CPU.
    """

    def __init__(self, path: Path, rows: int, dim: int):
        self.path, self.rows, self.dim = Path(path), rows, dim
        self._array: Optional[np.ndarray] = None
        self._pid: Optional[int] = None

    def array(self) -> np.ndarray:
        """The (N, d) memory map, opened read-only in this process."""
        if self._array is None or self._pid != os.getpid():
            self._array = np.load(self.path, mmap_mode="r")
            self._pid = os.getpid()
        return self._array

    def read(self, index: Any) -> torch.Tensor:
        """index (B,) -> (B, d) in the storage dtype (float16 or float32), in request order.

        The training step reads with this and lets the loss upcast chunk by chunk: converting a whole 96-px
        ScatNet batch (B=64, 140k columns) to float32 costs more than its Gram product on a 2-core CPU.
        """
        unique, inverse = np.unique(_index_array(index), return_inverse=True)  # sorted: sequential reads
        # fancy indexing copies into RAM, then back to request order; both copies in numpy, whose large arrays
        # get transparent huge pages (torch.index_select's fresh output page-faults 4 KiB at a time;
        # benchmarks/results/speed.md)
        out = torch.from_numpy(np.take(self.array()[unique], inverse.reshape(-1), axis=0))
        if isinstance(index, torch.Tensor) and index.device.type != "cpu":
            out = out.to(index.device, non_blocking=True)
        return out

    def __call__(self, index: Any) -> torch.Tensor:
        """index (B,) -> (B, d) float32 (:meth:`read`, then one conversion: in the storage dtype the reorder
        moves half the bytes)."""
        return self.read(index).float()

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_array": None, "_pid": None}

    def __repr__(self) -> str:
        return f"CachedRows({str(self.path)!r}, rows={self.rows}, dim={self.dim})"


def _read_metadata(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def open_complete(stem: Path, n_rows: int) -> Optional[CachedRows]:
    """The reader of a complete cache file ``<stem>.npy`` (its metadata exists and matches), else None."""
    meta = _read_metadata(stem.with_suffix(".json"))
    array_path = stem.with_suffix(".npy")
    if not meta or meta.get("format") != CACHE_FORMAT or meta.get("rows") != n_rows or not array_path.is_file():
        return None
    try:
        shape = np.load(array_path, mmap_mode="r").shape
    except (OSError, ValueError):
        return None
    if shape != (n_rows, meta.get("dim")):
        return None
    return CachedRows(array_path, n_rows, shape[1])


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------
def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    """The ``.npy`` (version 1.0) header of a C-order array of ``dtype`` and ``shape``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    )
    return header.getvalue()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (os.pwrite may write less than asked)."""
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _allocate(fd: int, size: int) -> None:
    """Give the open file ``size`` bytes with its blocks allocated now: ENOSPC here, not SIGBUS later.

    Where the system or file system cannot preallocate, the file is only extended (sparse); the
    positioned writes then report a full disk as ENOSPC themselves.
    """
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(fd, 0, size)
            return
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
                raise
    os.ftruncate(fd, size)


class RowFile:
    """An (N, d) ``.npy`` file being filled by rows: header written and blocks allocated at creation.

    Rows are written with ``os.pwrite`` (a run of consecutive indices in one call), not through a
    writable memory map: writing through a map into blocks the file system cannot allocate raises
    SIGBUS, a write raises OSError(ENOSPC).
    """

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple):
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(shape)
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        header = npy_header(self.dtype, self.shape)
        self.offset = len(header)
        self._fd: Optional[int] = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _allocate(self._fd, self.offset + self.shape[0] * self.row_bytes)
            _pwrite_all(self._fd, memoryview(header), 0)
        except BaseException:
            self.close()
            self.path.unlink(missing_ok=True)
            raise

    def write(self, index: np.ndarray, rows: np.ndarray) -> None:
        """Store ``rows`` (B, d) (converted to the file's dtype) as rows ``index`` (B,), any order."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if len(index) > 1 and not (np.diff(index) == 1).all():
            order = np.argsort(index, kind="stable")
            index, rows = index[order], rows[order]
        runs = np.concatenate(([0], np.flatnonzero(np.diff(index) != 1) + 1, [len(index)]))  # consecutive indices
        bounds = (runs * self.row_bytes).tolist()
        offsets = (self.offset + index[runs[:-1]].astype(np.int64) * self.row_bytes).tolist()
        data, fd = memoryview(rows.reshape(-1).view(np.uint8)), self._fd
        for start, stop, offset in zip(bounds[:-1], bounds[1:], offsets):
            if os.pwrite(fd, data[start:stop], offset) != stop - start:  # short write: finish it
                _pwrite_all(fd, data[start:stop], offset)

    def read(self) -> np.ndarray:
        """The rows written so far, as a read-only (N, d) memory map (unwritten rows are 0)."""
        return np.load(self.path, mmap_mode="r")

    def finish(self) -> None:
        """Flush to disk (a deferred write error, ENOSPC included, surfaces here) and close."""
        os.fsync(self._fd)
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _metadata(
    shape: tuple, source_dim: int, projected: bool, storage: np.dtype, stem: Path, material: Dict[str, Any]
) -> str:
    """The text of ``<stem>.json``, the file that marks ``<stem>.npy`` complete."""
    return canonical_json(
        {
            "format": CACHE_FORMAT,
            "rows": shape[0],
            "dim": shape[1],
            "source_dim": source_dim,
            "projected": projected,
            "stored_dtype": np.dtype(storage).name,
            "hash": stem.name.rsplit("-", 1)[-1],
            "material": material,
        }
    )


def output_size(module: nn.Module, probe: Callable[[nn.Module], int]) -> int:
    """d of ``module``'s (B, d) output: its ``output_dim()`` when it has one (no forward call),
    else ``probe(module)`` (a forward pass on one sample)."""
    output_dim = getattr(module, "output_dim", None)
    if callable(output_dim):
        try:
            return int(output_dim())
        except NotImplementedError:
            pass
    return probe(module)


def _format_bytes(n: float) -> str:
    """Decimal units, 3 significant digits: 40300000000 -> '40.3 GB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def _existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent (where the cache folder will be created)."""
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _fitting_max_dim(builders: List["EntryBuilder"], limit: float) -> Optional[int]:
    """The largest cache.max_dim whose entries fit in ``limit`` bytes (None if even 1 column does not).

    Each entry's overhead gets 64 bytes of slack: setting max_dim changes a few characters of its metadata.
    """

    def size(m: int) -> int:
        return sum(b.n_rows * min(b.planned_dim, m) * b.storage.itemsize + b.overhead + 64 for b in builders)

    low, high = 0, max(b.planned_dim for b in builders)
    while low < high:  # largest m in [0, high] with size(m) <= limit
        mid = (low + high + 1) // 2
        low, high = (mid, high) if size(mid) <= limit else (low, mid - 1)
    return low or None


def _size_summary(builders: List["EntryBuilder"]) -> str:
    """'about 40.3 GB (float16: scatnet 35.1 GB, hog 4.2 GB, ...; float32 widening can double an entry)'."""
    ranked = sorted(builders, key=lambda b: -b.planned_bytes)
    parts = [f"{b.key} {_format_bytes(b.planned_bytes)}" for b in ranked[:4]]
    if len(ranked) > 4:
        parts.append(f"{len(ranked) - 4} more")
    storage = ", ".join(sorted({b.storage.name for b in builders}))
    widening = "; float32 widening can double an entry" if any(b.storage == np.float16 for b in builders) else ""
    total = sum(b.planned_bytes for b in builders)
    return f"about {_format_bytes(total)} ({storage}: {', '.join(parts)}{widening})"


def check_space(builders: List["EntryBuilder"], root: Path, max_gb: Optional[float]) -> None:
    """Raise a one-line ConfigError if the planned entries exceed the free space under ``root`` or ``max_gb``."""
    if not builders:
        return
    total = sum(b.planned_bytes for b in builders)
    anchor = _existing_ancestor(root)
    free = shutil.disk_usage(anchor).free
    limits = [
        (
            free,
            f"only {_format_bytes(free)} is free on the disk of {anchor}",
            "cache.dir (a folder on a disk with more free space)",
        )
    ]
    if max_gb is not None:
        limits.append(
            (max_gb * 1e9, f"cache.max_gb={max_gb:g} allows {_format_bytes(max_gb * 1e9)}", "a larger cache.max_gb")
        )
    limit, why, key = min(limits, key=lambda item: item[0])
    if total <= limit:
        return
    fitting = _fitting_max_dim(builders, limit)
    max_dim = f"cache.max_dim={fitting} (fits)" if fitting else "cache.max_dim"
    raise ConfigError(
        f"the representation cache of {builders[0].n_rows} samples needs {_size_summary(builders)} "
        f"but {why}; set {max_dim}, {key}, or cache.enabled=false"
    )


def _no_space_error(err: OSError, builders: List["EntryBuilder"], root: Path) -> ConfigError:
    free = shutil.disk_usage(_existing_ancestor(root)).free
    return ConfigError(
        f"the disk of {root} ran out of space while building the representation cache "
        f"({os.strerror(err.errno)}; it needs {_size_summary(builders)}, "
        f"{_format_bytes(free)} is free now); the partial files were removed; free some space, "
        "or set cache.max_dim, cache.dir (a folder on a disk with more free space), "
        "or cache.enabled=false"
    )


class EntryBuilder:
    """Writes one representation's rows into a temporary (N, d) ``.npy`` file, then publishes it.

    The file is created at the first batch (when d is known), projected to ``max_dim`` columns if
    d > max_dim, and switched from float16 to float32 storage if a value exceeds ``FLOAT16_LIMIT``.
    Every sample index must be written exactly once. ``planned_dim`` (the stored d expected from the
    representation's output size) gives ``planned_bytes``, what :meth:`publish` leaves on disk
    without a float32 widening.
    """

    def __init__(
        self,
        key: str,
        module: nn.Module,
        stem: Path,
        material: Dict[str, Any],
        storage: np.dtype,
        max_dim: Optional[int],
        seed: int,
        source_dim: int,
    ):
        self.key, self.module, self.stem, self.material = key, module, stem, material
        self.n_rows = material["rows"]
        self.storage, self.max_dim, self.seed = np.dtype(storage), max_dim, seed
        self.projection: Optional[RandomProjection] = None
        self.source_dim: Optional[int] = None
        self.filled = np.zeros(self.n_rows, dtype=bool)
        self._file: Optional[RowFile] = None
        self.planned_dim = min(source_dim, max_dim) if max_dim else source_dim
        shape = (self.n_rows, self.planned_dim)
        self.overhead = len(npy_header(self.storage, shape)) + len(
            _metadata(shape, source_dim, self.planned_dim != source_dim, self.storage, stem, material).encode()
        )
        self.planned_bytes = self.n_rows * self.planned_dim * self.storage.itemsize + self.overhead

    def _partial_path(self, storage: np.dtype) -> Path:
        return self.stem.with_name(f"{self.stem.name}.{storage.name}.{os.getpid()}.partial.npy")

    def _open(self, source_dim: int) -> None:
        self.source_dim = source_dim
        if self.max_dim and source_dim > self.max_dim:
            self.projection = RandomProjection(source_dim, self.max_dim, self.seed)
        dim = self.projection.out_dim if self.projection else source_dim
        self._file = RowFile(self._partial_path(self.storage), self.storage, (self.n_rows, dim))

    def _widen_to_float32(self) -> None:
        """Copy the rows written so far into a float32 file and continue there (the float16 file is removed,
        also when the copy fails: the float32 file is then the one :meth:`discard` removes)."""
        old = self._file
        self._file = RowFile(self._partial_path(np.dtype(np.float32)), np.float32, old.shape)
        self.storage = self._file.dtype
        try:
            rows = old.read()
            step = max(1, _COPY_BYTES // max(1, old.row_bytes))
            for start in range(0, old.shape[0], step):
                block = np.arange(start, min(start + step, old.shape[0]))
                self._file.write(block, rows[start : block[-1] + 1])
            del rows
        finally:
            old.close()
            old.path.unlink(missing_ok=True)
        messages.info(
            f"representation cache: '{self.key}' exceeds the float16 range (|x| > {FLOAT16_LIMIT:g}); storing float32"
        )

    def add(self, index: np.ndarray, output: torch.Tensor) -> None:
        """Store ``output`` (B, ...) as the rows ``index`` (B,)."""
        if output.shape[0] != len(index):
            raise MVMRError(
                f"representation '{self.key}' returned {output.shape[0]} rows for a batch of "
                f"{len(index)} images; it must map (B, C, H, W) to (B, d)"
            )
        rows = output.detach().reshape(len(index), -1).float()
        if self._file is None:
            self._open(rows.shape[1])
        elif rows.shape[1] != self.source_dim:
            raise MVMRError(
                f"representation '{self.key}' changed its output size from {self.source_dim} to "
                f"{rows.shape[1]}; it must give a fixed d for a fixed image size"
            )
        if not torch.isfinite(rows).all():
            raise MVMRError(
                f"representation '{self.key}' gave non-finite values for samples {index.tolist()[:4]}...; "
                "fix the representation or its input before caching"
            )
        if self.projection is not None:
            rows = self.projection(rows)
        rows = rows.cpu().numpy()
        if self.storage == np.float16 and np.abs(rows).max(initial=0.0) > FLOAT16_LIMIT:
            self._widen_to_float32()
        self._file.write(index, rows)
        self.filled[index] = True

    def publish(self) -> CachedRows:
        """Flush, rename the array into place, then write the metadata that marks it complete.

        If the metadata cannot be written (a full disk), the renamed array is removed again.
        """
        missing = int((~self.filled).sum())
        if missing or self._file is None:
            raise DataError(
                f"the cache loader left {missing or self.n_rows} of {self.n_rows} samples unvisited; "
                "use a loader over the whole dataset (no drop_last, no subset sampler)"
            )
        shape, partial = self._file.shape, self._file.path
        self._file.finish()
        self._file = None
        array_path = self.stem.with_suffix(".npy")
        os.replace(partial, array_path)
        try:
            _atomic_write_text(
                self.stem.with_suffix(".json"),
                _metadata(shape, self.source_dim, self.projection is not None, self.storage, self.stem, self.material),
            )
        except BaseException:
            array_path.unlink(missing_ok=True)
            raise
        return CachedRows(array_path, shape[0], shape[1])

    def discard(self) -> None:
        """Remove the temporary array (after a failed build)."""
        if self._file is not None:
            self._file.close()
            self._file.path.unlink(missing_ok=True)
            self._file = None


@contextlib.contextmanager
def _frozen_on(module: nn.Module, device: torch.device):
    """Eval mode on ``device`` inside the block; the module's mode and device are restored after it."""
    was_training = module.training
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    home = tensor.device if tensor is not None else None
    module.to(device).eval()
    try:
        yield module
    finally:
        module.train(was_training)
        if home is not None:
            module.to(home)


def _checked_index(index: Any, batch: int, n_rows: int) -> np.ndarray:
    idx = _index_array(index)
    if len(idx) != batch or (len(idx) and (idx.min() < 0 or idx.max() >= n_rows)):
        raise DataError(
            f"the cache loader must yield (images, labels, index) with index (B,) in [0, {n_rows}); "
            f"got {len(idx)} indices for {batch} images, "
            f"range [{idx.min(initial=0)}, {idx.max(initial=0)}]"
        )
    return idx


def _fill(
    builders: List[EntryBuilder],
    loader: Iterable,
    eval_view: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    progress: bool,
) -> None:
    """One pass over ``loader``: x̄ = eval_view(images) once per batch, then every pending representation."""
    with contextlib.ExitStack() as stack, torch.no_grad():
        modules = [stack.enter_context(_frozen_on(b.module, device)) for b in builders]
        n_rows = builders[0].n_rows
        for images, _labels, index in tqdm(loader, desc="caching representations", disable=not progress):
            idx = _checked_index(index, images.shape[0], n_rows)
            if builders[0].filled[idx].any() or len(np.unique(idx)) != len(idx):
                raise DataError(
                    f"the cache loader yielded a sample index of {idx.tolist()[:4]}... twice; "
                    "it must visit each sample exactly once (no sampler with replacement)"
                )
            views = eval_view(images.to(device, non_blocking=True))
            for builder, module in zip(builders, modules):
                builder.add(idx, module(views))


def _probe_output_size(
    module: nn.Module, loader: Any, eval_view: Callable[[torch.Tensor], torch.Tensor], device: torch.device
) -> int:
    """d of ``module``'s output on the first sample of ``loader.dataset`` (for modules without ``output_dim``)."""
    image = torch.as_tensor(loader.dataset[0][0])[None]
    with torch.no_grad(), _frozen_on(module, device):
        return int(module(eval_view(image.to(device))).reshape(1, -1).shape[1])


def _dataset_length(loader: Any) -> int:
    try:
        n_rows = len(loader.dataset)
    except (AttributeError, TypeError):
        raise DataError(
            "the cache loader needs a sized .dataset (a map-style Dataset); "
            "pass a torch DataLoader over the training set"
        ) from None
    if n_rows < 1:
        raise DataError("cannot cache representations of an empty dataset; check the dataset path and split")
    return n_rows


def _safe_file_key(key: str) -> str:
    return _UNSAFE_FILE_CHARS.sub("_", key) or "representation"


class RepresentationCache:
    """Cached φ_k(x̄) per representation key: ``cache[key](index (B,)) -> (B, d_k) float32``.

    Only representations with ``.deterministic == True`` are cached; others are absent (``key in
    cache`` is False) and must be computed every step.
    """

    def __init__(self, readers: Mapping[str, CachedRows]):
        self._readers = dict(readers)

    @staticmethod
    def _plan(
        representations: Mapping[str, nn.Module],
        loader: Iterable,
        eval_view: Callable[[torch.Tensor], torch.Tensor],
        root: Path,
        fingerprint: Mapping[str, object],
        device: torch.device,
        dtype: torch.dtype,
        max_dim: Optional[int],
        seed: int,
    ) -> "tuple[Dict[str, CachedRows], List[EntryBuilder]]":
        """Readers of the complete entries under ``root`` and builders of the missing ones; writes nothing."""
        if dtype not in STORAGE_DTYPES:
            raise ConfigError(f"cache dtype must be torch.float16 or torch.float32, got {dtype}")
        if max_dim is not None and max_dim < 1:
            raise ConfigError(f"cache max_dim must be a positive integer or None, got {max_dim}")
        n_rows = _dataset_length(loader)
        readers: Dict[str, CachedRows] = {}
        pending: List[EntryBuilder] = []
        for key, module in representations.items():
            if not getattr(module, "deterministic", False):
                continue
            material = entry_material(fingerprint, key, module, n_rows, dtype, max_dim, seed)
            stem = root / f"{_safe_file_key(key)}-{digest(material)}"
            reader = open_complete(stem, n_rows)
            if reader is not None:
                messages.info(f"representation cache: reusing {reader.path}")
                readers[key] = reader
            else:
                source_dim = output_size(module, lambda m: _probe_output_size(m, loader, eval_view, device))
                pending.append(
                    EntryBuilder(key, module, stem, material, STORAGE_DTYPES[dtype], max_dim, seed, source_dim)
                )
        return readers, pending

    @classmethod
    def estimate(
        cls,
        representations: Mapping[str, nn.Module],
        loader: Iterable,
        eval_view: Callable[[torch.Tensor], torch.Tensor],
        root: str | Path,
        fingerprint: Mapping[str, object],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float16,
        max_dim: Optional[int] = None,
        seed: int = 0,
    ) -> Dict[str, int]:
        """Bytes that :meth:`build` with the same arguments would write, per representation key to compute.

        Keys whose complete entry is already under ``root`` (reused: no cost) and non-deterministic
        ones are absent. Per key: N × stored d (min(d, max_dim)) × the storage dtype's bytes, plus the
        ``.npy`` header and the metadata file; a float16 entry widened to float32 takes twice the array
        bytes (and both files exist while it is copied). d comes from the representation's
        ``output_dim()``; a module without one is run once on the first sample.
        """
        _, pending = cls._plan(
            representations, loader, eval_view, Path(root), fingerprint, torch.device(device), dtype, max_dim, seed
        )
        return {builder.key: builder.planned_bytes for builder in pending}

    @classmethod
    def check_fits(
        cls,
        representations: Mapping[str, nn.Module],
        loader: Iterable,
        eval_view: Callable[[torch.Tensor], torch.Tensor],
        root: str | Path,
        fingerprint: Mapping[str, object],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float16,
        max_dim: Optional[int] = None,
        seed: int = 0,
        max_gb: Optional[float] = None,
    ) -> None:
        """The check :meth:`build` starts with, alone (writes nothing): under DDP every rank runs it before the
        ranks wait for rank 0's build, so that a cache that cannot fit stops them all at once."""
        _, pending = cls._plan(
            representations, loader, eval_view, Path(root), fingerprint, torch.device(device), dtype, max_dim, seed
        )
        check_space(pending, Path(root), max_gb)

    @classmethod
    def build(
        cls,
        representations: Mapping[str, nn.Module],
        loader: Iterable,
        eval_view: Callable[[torch.Tensor], torch.Tensor],
        root: str | Path,
        fingerprint: Mapping[str, object],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float16,
        max_dim: Optional[int] = None,
        seed: int = 0,
        progress: bool = True,
        max_gb: Optional[float] = None,
    ) -> "RepresentationCache":
        """Reuse complete cache files under ``root``; compute the missing ones in one pass over ``loader``.

        ``loader`` yields (images uint8 (B, C, H, W), labels, index (B,)), index = position in
        ``loader.dataset``, every position exactly once, any order. ``eval_view`` maps the images
        (on ``device``) to x̄ (B, C, H, W) float. ``fingerprint``: what the values depend on besides the
        representation module (dataset name, split, image size, view settings, representation
        parameters, teacher weights); see :func:`entry_material`. ``dtype``: storage, float16 or
        float32 (float16 falls back to float32 when |φ| > 6e4). ``max_dim``: representations with
        d > max_dim are stored as a seeded :class:`RandomProjection` to max_dim columns.

        Before computing anything, the bytes to write (:meth:`estimate`) are compared with the free
        space of ``root``'s disk and with ``max_gb`` (GB = 1e9 bytes, None: no limit of its own); above
        either, a one-line ConfigError names the sizes and the cache.* keys to change, and nothing is
        written. A disk that fills up during the build (ENOSPC, EDQUOT) gives the same kind of error;
        the partial files are removed.
        """
        if max_gb is not None and not max_gb > 0:
            raise ConfigError(f"cache.max_gb must be a positive number of GB or null, got {max_gb}")
        root = Path(root)
        readers, pending = cls._plan(
            representations, loader, eval_view, root, fingerprint, torch.device(device), dtype, max_dim, seed
        )
        check_space(pending, root, max_gb)
        root.mkdir(parents=True, exist_ok=True)
        if pending:
            try:
                _fill(pending, loader, eval_view, torch.device(device), progress)
                readers.update({b.key: b.publish() for b in pending})
            except OSError as err:
                if err.errno in _NO_SPACE:
                    for builder in pending:
                        builder.discard()
                    raise _no_space_error(err, pending, root) from None
                raise
            finally:
                for builder in pending:
                    builder.discard()
        return cls({key: readers[key] for key in representations if key in readers})

    def __contains__(self, key: object) -> bool:
        return key in self._readers

    def __getitem__(self, key: str) -> CachedRows:
        return self._readers[key]

    def __len__(self) -> int:
        return len(self._readers)

    def keys(self) -> List[str]:
        return list(self._readers)

    @property
    def dims(self) -> Dict[str, int]:
        """Stored width d_k per key (max_dim where the representation was projected)."""
        return {key: reader.dim for key, reader in self._readers.items()}

    @property
    def paths(self) -> Dict[str, Path]:
        return {key: reader.path for key, reader in self._readers.items()}

    def __repr__(self) -> str:
        return f"RepresentationCache({', '.join(f'{k}: {d}' for k, d in self.dims.items())})"
