"""Representation cache and disk space: size estimate, refusal before any work, full disk without SIGBUS."""

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mvmr.errors import ConfigError
from mvmr.representations import cache as cache_module
from mvmr.representations.cache import RepresentationCache

N, SHAPE = 40, (3, 8, 8)
D = int(np.prod(SHAPE))
FINGERPRINT = {"dataset": "toy", "size": 8}


class IndexedImages(Dataset):
    """(image uint8 (C, H, W), label, index) for N fixed random images."""

    def __init__(self, n=N):
        self.images = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0, i


def eval_view(images):
    return images.float() / 255


class Wide(nn.Module):
    """(B, C, H, W) -> (B, repeat·C·H·W), sin(x) repeated; declares output_dim(); counts forward calls."""

    deterministic = True

    def __init__(self, repeat=1, offset=0.0):
        super().__init__()
        self.repeat, self.offset, self.calls = repeat, offset, 0

    def output_dim(self):
        return self.repeat * D

    def forward(self, x):
        self.calls += 1
        return (torch.sin(x) + self.offset).flatten(1).repeat(1, self.repeat)

    def extra_repr(self):
        return f"repeat={self.repeat}, offset={self.offset}"


class NoDim(Wide):
    """Like Wide but without output_dim(): its size is found by one forward pass on the first sample."""

    output_dim = None


def build(root, reps, **kw):
    kw.setdefault("fingerprint", FINGERPRINT)
    kw.setdefault("progress", False)
    return RepresentationCache.build(
        reps, kw.pop("loader", None) or DataLoader(IndexedImages(), batch_size=7), eval_view, root, **kw
    )


def estimate(root, reps, **kw):
    kw.setdefault("fingerprint", FINGERPRINT)
    return RepresentationCache.estimate(reps, DataLoader(IndexedImages(), batch_size=7), eval_view, root, **kw)


def fake_free_space(monkeypatch, free):
    """shutil.disk_usage as the cache module sees it reports ``free`` bytes; returns the paths it was asked for."""
    asked = []
    real = shutil.disk_usage

    def disk_usage(path):
        asked.append(Path(path))
        return real(path)._replace(free=free)

    monkeypatch.setattr(cache_module.shutil, "disk_usage", disk_usage)
    return asked


def leftovers(root):
    return sorted(p.name for p in Path(root).iterdir()) if Path(root).exists() else []


def assert_only_complete_entries(root):
    """No partial or temporary file; every array has its metadata and the other way round."""
    names = leftovers(root)
    assert not [n for n in names if "partial" in n or n.endswith(".tmp")], names
    stems = {n.rsplit(".", 1)[0] for n in names}
    assert names == sorted(f"{s}.{ext}" for s in stems for ext in ("json", "npy")), names


# ---------------------------------------------------------------------------- (a) refusal before any work
def test_estimate_above_max_gb_stops_before_any_forward(tmp_path):
    reps = {"a": Wide(), "b": Wide(repeat=3)}
    root = tmp_path / "cache"
    with pytest.raises(ConfigError) as info:
        build(root, reps, max_gb=1e-6)  # 1 kB
    message = str(info.value)
    assert "\n" not in message
    assert "cache.max_gb=1e-06 allows 1 kB" in message
    total = sum(estimate(root, reps).values())
    assert f"needs about {cache_module._format_bytes(total)} (float16: b " in message  # largest first
    for key in ("cache.max_dim", "a larger cache.max_gb", "cache.enabled=false"):
        assert key in message
    assert reps["a"].calls == 0 and reps["b"].calls == 0
    assert not root.exists()  # not even the folder was created


def test_estimate_above_free_space_stops_before_any_forward(tmp_path, monkeypatch):
    root = tmp_path / "new" / "cache"
    asked = fake_free_space(monkeypatch, 5000)
    reps = {"a": Wide(), "b": Wide(repeat=2)}
    with pytest.raises(ConfigError) as info:
        build(root, reps, max_gb=100.0)
    message = str(info.value)
    assert "\n" not in message
    assert f"only 5 kB is free on the disk of {tmp_path}" in message
    assert "cache.dir (a folder on a disk with more free space)" in message and "cache.enabled=false" in message
    assert asked and asked[-1] == tmp_path  # the nearest existing ancestor of cache.dir
    assert reps["a"].calls == 0 and reps["b"].calls == 0
    assert not (tmp_path / "new").exists()


def test_refusal_leaves_an_existing_cache_folder_as_it_was(tmp_path, monkeypatch):
    fake_free_space(monkeypatch, 100)
    rep = Wide()
    with pytest.raises(ConfigError, match="is free on the disk of"):
        build(tmp_path, {"a": rep})
    assert rep.calls == 0 and leftovers(tmp_path) == []


def test_suggested_max_dim_fits(tmp_path):
    reps = {"a": Wide(), "b": Wide(repeat=4)}
    limit_gb = 20e3 / 1e9  # 20 kB: the float16 cache needs about 77 kB
    with pytest.raises(ConfigError, match=r"cache.max_dim=(\d+) \(fits\)") as info:
        build(tmp_path, reps, max_gb=limit_gb)
    suggested = int(re.search(r"cache.max_dim=(\d+)", str(info.value)).group(1))
    assert sum(estimate(tmp_path, reps, max_dim=suggested).values()) <= 20e3
    assert sum(estimate(tmp_path, reps, max_dim=suggested + 1).values()) > 20e3 - 200  # about the largest that fits
    cache = build(tmp_path, reps, max_gb=limit_gb, max_dim=suggested)
    assert max(cache.dims.values()) == suggested


def test_reused_entries_cost_nothing(tmp_path):
    build(tmp_path, {"a": Wide(repeat=4)})
    reps = {"a": Wide(repeat=4), "b": Wide()}
    planned = estimate(tmp_path, reps)
    assert list(planned) == ["b"]  # a is complete on disk
    limit_gb = (planned["b"] + 100) / 1e9  # too small for a and b, enough for b
    with pytest.raises(ConfigError, match="cache.max_gb"):
        build(tmp_path / "elsewhere", {"a": Wide(repeat=4), "b": Wide()}, max_gb=limit_gb)
    build(tmp_path, reps, max_gb=limit_gb)
    assert reps["a"].calls == 0 and reps["b"].calls > 0


def test_module_without_output_dim_is_probed_on_one_sample(tmp_path):
    rep = NoDim(repeat=2)
    with pytest.raises(ConfigError, match="cache.max_gb"):
        build(tmp_path, {"a": rep}, max_gb=1e-6)
    assert rep.calls == 1  # the one-sample probe, not the build
    assert leftovers(tmp_path) == []


def test_max_gb_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="cache.max_gb must be a positive number"):
        build(tmp_path, {"a": Wide()}, max_gb=0)


@pytest.mark.parametrize("world_size,global_zero", [(1, True), (2, False)])
def test_callback_passes_cache_max_gb(tmp_path, monkeypatch, world_size, global_zero):
    """cache.max_gb in the config reaches the build (the callback that training runs); under DDP a rank other than
    0 refuses too, before waiting at the barrier for rank 0's build."""
    from mvmr.config import load_config
    from mvmr.methods.callbacks import build_callbacks

    root = tmp_path / "shared-cache"
    cfg = load_config(
        None,
        [
            "representations=[{name: pixels, weight: 1.0}]",
            f"cache.dir={root}",
            "cache.max_gb=1e-6",
            "trainer.progress_bar=false",
        ],
    )
    rep = Wide()

    class View(nn.Module):
        def forward(self, x):
            return eval_view(x)

    module = SimpleNamespace(
        representations=nn.ModuleDict({"pixels": rep}),
        eval_view=View(),
        device=torch.device("cpu"),
        info=SimpleNamespace(mean=(0.5,), std=(0.25,)),
    )
    datamodule = SimpleNamespace(
        num_pretrain_samples=N, pretrain_dataloader=lambda **kw: DataLoader(IndexedImages(), batch_size=7)
    )
    barriers = []
    monkeypatch.setattr("mvmr.methods.callbacks.wait_for_every_process", lambda: barriers.append("wait"))
    trainer = SimpleNamespace(
        is_global_zero=global_zero,
        local_rank=0 if global_zero else 1,
        world_size=world_size,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    [callback] = build_callbacks(cfg, module, datamodule, run=None)
    with pytest.raises(ConfigError, match=r"cache.max_gb=1e-06 allows"):
        callback.setup(trainer, module, "fit")
    assert rep.calls == 0 and not root.exists() and barriers == []


# ---------------------------------------------------------------------------- (b) the estimate is exact
@pytest.mark.parametrize("settings", [{}, {"dtype": torch.float32}, {"max_dim": 100, "seed": 3}])
def test_estimate_equals_the_bytes_written(tmp_path, settings):
    reps = {"a": Wide(), "b": Wide(repeat=3), "c": NoDim(repeat=2)}
    planned = estimate(tmp_path, reps, **settings)
    assert set(planned) == {"a", "b", "c"}
    itemsize = 4 if settings.get("dtype") == torch.float32 else 2
    for key, repeat in (("a", 1), ("b", 3), ("c", 2)):
        dim = min(repeat * D, settings.get("max_dim", 10**9))
        assert 0 < planned[key] - N * dim * itemsize < 4096  # array + header and metadata
    cache = build(tmp_path, reps, **settings)
    for key, path in cache.paths.items():
        assert path.stat().st_size + path.with_suffix(".json").stat().st_size == planned[key]
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) == sum(planned.values())
    assert estimate(tmp_path, reps, **settings) == {}  # all reused now


def test_float16_overflow_still_widens_and_stays_within_twice_the_estimate(tmp_path):
    rep = Wide(offset=1e5)  # beyond float16
    planned = estimate(tmp_path, {"big": rep})["big"]
    cache = build(tmp_path, {"big": rep})
    assert np.load(cache.paths["big"]).dtype == np.float32
    written = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert planned < written <= 2 * planned
    np.testing.assert_allclose(
        cache["big"](np.arange(N)).numpy(),
        (np.sin(IndexedImages().images.numpy() / 255.0) + 1e5).reshape(N, -1),
        rtol=1e-6,
    )
    assert_only_complete_entries(tmp_path)


# ---------------------------------------------------------------------------- (d) ENOSPC in the middle of a build
def no_space(code=errno.ENOSPC):
    return OSError(code, os.strerror(code))


def fail_after(monkeypatch, target, name, calls, code=errno.ENOSPC):
    """``target.name`` raises OSError(code) from its ``calls``+1-th call on."""
    real, count = getattr(target, name), [0]

    def fake(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise no_space(code)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, fake)
    return count


@pytest.mark.parametrize("where", ["pwrite", "fallocate", "fsync", "metadata", "quota", "widen", "widen-copy"])
def test_disk_full_mid_build_is_a_one_line_error_and_leaves_no_partial_file(tmp_path, monkeypatch, where):
    reps = {"a": Wide(), "b": Wide(repeat=2)}
    if where in ("pwrite", "quota"):  # after the headers and a few batches of rows
        code = errno.EDQUOT if where == "quota" else errno.ENOSPC
        count = fail_after(monkeypatch, cache_module.os, "pwrite", 8, code)
    elif where.startswith("widen"):  # "b" exceeds float16 at its first batch: its float32 file is allocated, copied
        if not hasattr(os, "posix_fallocate"):
            pytest.skip("no posix_fallocate on this system")
        reps["b"] = Wide(repeat=2, offset=1e5)
        if where == "widen":  # headers of a and b (float16) written, the float32 file cannot be allocated
            count = fail_after(monkeypatch, cache_module.os, "posix_fallocate", 2)
        else:  # a's header and first rows, b's float16 and float32 headers written, then the copy fails
            count = fail_after(monkeypatch, cache_module.os, "pwrite", 4)
    elif where == "fallocate":  # the second entry's file cannot be allocated
        if not hasattr(os, "posix_fallocate"):
            pytest.skip("no posix_fallocate on this system")
        count = fail_after(monkeypatch, cache_module.os, "posix_fallocate", 1)
    elif where == "fsync":  # a deferred write error, reported when the array is flushed
        count = fail_after(monkeypatch, cache_module.os, "fsync", 0)
    else:  # the second entry's metadata, half written: the first entry is complete and stays
        real_write_text = Path.write_text
        count = [0]

        def write_text(self, text, *args, **kwargs):
            count[0] += 1
            if count[0] > 1:
                real_write_text(self, text[: len(text) // 2], *args, **kwargs)
                raise no_space()
            return real_write_text(self, text, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(ConfigError) as info:
        build(tmp_path, reps)
    message = str(info.value)
    assert count[0] > 0 and "\n" not in message
    assert message.startswith(f"the disk of {tmp_path} ran out of space while building the representation cache (")
    assert os.strerror(errno.EDQUOT if where == "quota" else errno.ENOSPC) in message
    for key in ("the partial files were removed", "cache.max_dim", "cache.dir", "cache.enabled=false"):
        assert key in message
    assert_only_complete_entries(tmp_path)
    if where == "metadata":
        assert len(leftovers(tmp_path)) == 2  # entry a, complete
    else:
        assert leftovers(tmp_path) == []
    monkeypatch.undo()
    cache = build(tmp_path, reps)  # a clean state: the next build works
    assert sorted(cache.dims.values()) == [D, 2 * D]


def test_other_write_errors_propagate_and_remove_the_partial_files(tmp_path, monkeypatch):
    fail_after(monkeypatch, cache_module.os, "pwrite", 4, errno.EIO)
    with pytest.raises(OSError) as info:
        build(tmp_path, {"a": Wide()})
    assert info.value.errno == errno.EIO and not isinstance(info.value, ConfigError)
    assert leftovers(tmp_path) == []


def test_rows_are_never_written_through_a_writable_memory_map(tmp_path, monkeypatch):
    """Writing through a map into unallocatable blocks is a SIGBUS; only read-only maps are allowed."""
    real_memmap = np.memmap.__new__

    def memmap(cls, filename, dtype=np.uint8, mode="r+", *args, **kwargs):
        assert mode in ("r", "c"), f"writable memory map of {filename}"
        return real_memmap(cls, filename, dtype, mode, *args, **kwargs)

    monkeypatch.setattr(np.memmap, "__new__", memmap)
    cache = build(tmp_path, {"a": Wide(), "big": Wide(offset=1e5)})  # float16, and a widening to float32
    np.testing.assert_allclose(
        cache["a"](np.arange(N)).numpy(), np.sin(IndexedImages().images.numpy() / 255.0).reshape(N, -1), atol=1e-3
    )


# ---------------------------------------------------------------------------- (c) a real small file system
FILL_SCRIPT = textwrap.dedent("""
    import errno, os, sys
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from mvmr.cli.flags import run_main
    from mvmr.representations import cache
    from mvmr.representations.registry import build_representation

    root, mode = sys.argv[1], sys.argv[2]
    if mode == "sparse":  # no preallocation: the row writes themselves meet the full disk
        del os.posix_fallocate
    if mode != "estimate":  # another process fills the disk after the size check, leaving 1 MB
        real_fill = cache._fill

        def fill_then_build(*args, **kwargs):
            with open(os.path.join(os.path.dirname(root), "filler"), "wb") as f:
                while os.statvfs(root).f_bavail * os.statvfs(root).f_frsize > (1 << 20):
                    f.write(b"x" * (1 << 16))
                f.flush()
            return real_fill(*args, **kwargs)

        cache._fill = fill_then_build
    N = 4000  # 4000 x 784 float16: 6.3 MB
    images = torch.randint(0, 256, (N, 1, 28, 28), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, torch.zeros(N), torch.arange(N)), batch_size=256)


    @run_main
    def main(argv):
        reps = {"pixels": build_representation("pixels", {}, in_channels=1, image_size=28)}
        cache.RepresentationCache.build(reps, loader, lambda x: x.float() / 255, root, {"t": 1}, progress=False)
        print("built")


    sys.exit(main(None))
""")
# mount a tmpfs of $1 bytes on $2 in a private mount namespace, run $3 $4 $2/cache $5, list what is left
IN_TMPFS = (
    'mount -t tmpfs -o size="$1" tmpfs "$2" || exit 97; "$3" "$4" "$2/cache" "$5"; rc=$?; '
    'echo "left: [$(ls -A "$2/cache" 2>/dev/null | tr "\\n" " ")]"; exit $rc'
)


def private_mount_command():
    """unshare arguments that may mount a tmpfs here (a user namespace needs no privileges), or None."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None or shutil.which("mount") is None:
        return None
    probe = Path(os.environ.get("TMPDIR", "/tmp"))
    for command in (["unshare", "-Urm"], ["unshare", "-m"]):
        try:
            done = subprocess.run(
                [*command, "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1"', "sh", str(probe)],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return command
    return None


@pytest.mark.parametrize("mode,size", [("estimate", 4 << 20), ("allocate", 8 << 20), ("sparse", 8 << 20)])
def test_real_small_file_system_gives_the_error_line_not_sigbus(tmp_path, mode, size):
    command = private_mount_command()
    if command is None:
        pytest.skip("cannot mount a tmpfs here (no unshare, or no user/mount namespaces)")
    script, mount_point = tmp_path / "fill_cache.py", tmp_path / "mnt"
    script.write_text(FILL_SCRIPT)
    mount_point.mkdir()
    done = subprocess.run(
        [*command, "sh", "-c", IN_TMPFS, "sh", str(size), str(mount_point), sys.executable, str(script), mode],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode == 97:
        pytest.skip(f"tmpfs mount refused: {done.stderr.strip()}")
    assert done.returncode not in (-signal.SIGBUS, 128 + signal.SIGBUS), done.stderr[-2000:]
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr[-2000:])
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    if mode == "estimate":
        assert "the representation cache of 4000 samples needs about 6.27 MB" in errors[0]
        assert "is free on the disk of" in errors[0]
    else:
        assert "ran out of space while building the representation cache" in errors[0]
    assert "left: []" in done.stdout  # no partial file in the cache folder
