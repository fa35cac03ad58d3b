"""Representation cache: rows equal direct computation, invalidation, reuse, crash safety, projection."""

import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mvmr.errors import ConfigError, DataError
from mvmr.representations.cache import RandomProjection, RepresentationCache

N, SHAPE = 50, (3, 8, 8)
FINGERPRINT = {"dataset": "toy", "split": "train", "size": 8, "view": {"mean": 0.5, "std": 0.25}}


class IndexedImages(Dataset):
    """(image uint8 (C, H, W), label, index) for N fixed random images."""

    def __init__(self, n=N, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 3, i


def eval_view(images):
    """uint8 (B, C, H, W) -> normalised float32."""
    return (images.float() / 255 - 0.5) / 0.25


def eval_view_reference(images):
    """float64 numpy reference of eval_view."""
    return (images.numpy().astype(np.float64) / 255 - 0.5) / 0.25


class Sine(nn.Module):
    """Deterministic stand-in: sin(scale·x) flattened, (B, C, H, W) -> (B, C·H·W); counts forward calls.

    Element-wise, so its float32 result does not depend on how samples are batched.
    """

    deterministic = True

    def __init__(self, scale=3.0, fail_after=None, offset=0.0):
        super().__init__()
        self.scale, self.offset, self.fail_after, self.calls = scale, offset, fail_after, 0

    def forward(self, x):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.ran_in_training_mode = self.training
        return (torch.sin(x * self.scale) + self.offset).flatten(1)

    def extra_repr(self):
        return f"scale={self.scale}, offset={self.offset}"


class Noisy(Sine):
    deterministic = False


def loader(shuffle=False, batch_size=7, dataset=None):
    return DataLoader(
        dataset or IndexedImages(), batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(1)
    )


def build(root, reps, **kw):
    kw.setdefault("fingerprint", FINGERPRINT)
    kw.setdefault("progress", False)
    return RepresentationCache.build(reps, kw.pop("loader", None) or loader(), eval_view, root, **kw)


def reference_rows(scale=3.0, offset=0.0):
    """φ(x̄) for the whole dataset, float64 numpy."""
    x = eval_view_reference(IndexedImages().images)
    return (np.sin(scale * x) + offset).reshape(N, -1)


def test_float32_cache_equals_direct_computation_exactly(tmp_path):
    rep = Sine()
    cache = build(tmp_path, {"sine": rep}, dtype=torch.float32)
    assert cache.keys() == ["sine"] and cache.dims == {"sine": int(np.prod(SHAPE))}
    stored = cache["sine"](torch.arange(N))
    assert stored.dtype == torch.float32
    with torch.no_grad():
        direct = rep(eval_view(IndexedImages().images))
    assert torch.equal(stored, direct)
    np.testing.assert_allclose(stored.numpy(), reference_rows(), rtol=0, atol=1e-5)
    assert np.load(cache.paths["sine"]).dtype == np.float32  # a self-describing .npy file


def test_float16_cache_within_relative_precision(tmp_path):
    cache = build(tmp_path, {"sine": Sine(offset=2.0)})  # values in [1, 3]: float16 relative error <= 2^-11
    assert np.load(cache.paths["sine"]).dtype == np.float16
    stored = cache["sine"](torch.arange(N)).numpy()
    ref = reference_rows(offset=2.0)
    assert np.max(np.abs(stored - ref) / np.abs(ref)) < 1e-3
    assert np.max(np.abs(stored - ref) / np.abs(ref)) > 0  # really rounded to float16


def test_float16_rows_read_in_request_order_as_float32(tmp_path):
    cache = build(tmp_path, {"sine": Sine(offset=2.0)})
    stored = np.load(cache.paths["sine"])
    assert stored.dtype == np.float16
    index = torch.tensor([41, 3, 3, 0, 49, 17, 2])  # shuffled, with a duplicate
    rows = cache["sine"](index)
    assert rows.dtype == torch.float32
    np.testing.assert_array_equal(rows.numpy(), stored[index.numpy()].astype(np.float32))


def test_read_returns_the_storage_dtype_in_request_order(tmp_path):
    cache = build(tmp_path, {"sine": Sine(offset=2.0)})
    stored = np.load(cache.paths["sine"])
    index = torch.tensor([41, 3, 3, 0, 49, 17, 2])  # shuffled, with a duplicate
    rows = cache["sine"].read(index)
    assert rows.dtype == torch.float16  # the loss upcasts chunk by chunk
    np.testing.assert_array_equal(rows.numpy(), stored[index.numpy()])
    torch.testing.assert_close(cache["sine"](index), rows.float(), rtol=0, atol=0)


def test_float16_overflow_falls_back_to_float32(tmp_path):
    big = Sine(offset=1e5)  # beyond the float16 range (65504)
    cache = build(tmp_path, {"big": big})
    assert np.load(cache.paths["big"]).dtype == np.float32
    meta = json.loads(cache.paths["big"].with_suffix(".json").read_text())
    assert meta["stored_dtype"] == "float32"
    np.testing.assert_allclose(cache["big"](np.arange(N)).numpy(), reference_rows(offset=1e5), rtol=1e-6)


def test_shuffled_loader_gives_the_same_rows(tmp_path):
    ordered = build(tmp_path / "a", {"sine": Sine()}, dtype=torch.float32)
    shuffled = build(tmp_path / "b", {"sine": Sine()}, dtype=torch.float32, loader=loader(shuffle=True, batch_size=8))
    np.testing.assert_array_equal(np.load(ordered.paths["sine"]), np.load(shuffled.paths["sine"]))


def test_reads_any_order_and_duplicates_by_sample_index(tmp_path):
    cache = build(tmp_path, {"sine": Sine()}, dtype=torch.float32)
    ref = reference_rows()
    index = torch.tensor([41, 3, 3, 0, 49, 17, 2])
    np.testing.assert_allclose(cache["sine"](index).numpy(), ref[index.numpy()], atol=1e-5)
    reader = pickle.loads(pickle.dumps(cache["sine"]))  # what a DataLoader worker receives
    np.testing.assert_allclose(reader([5, 1]).numpy(), ref[[5, 1]], atol=1e-5)


def test_second_build_reuses_files_without_computing(tmp_path, capsys):
    first = build(tmp_path, {"sine": Sine()})
    rep = Sine()
    again = build(tmp_path, {"sine": rep})
    assert rep.calls == 0
    assert again.paths == first.paths
    assert f"representation cache: reusing {first.paths['sine']}" in capsys.readouterr().out


def test_only_missing_representations_are_computed(tmp_path):
    build(tmp_path, {"a": Sine(scale=1.0)})
    a, b = Sine(scale=1.0), Sine(scale=2.0)
    cache = build(tmp_path, {"a": a, "b": b}, fingerprint={**FINGERPRINT, "representations": {"a": 1, "b": 2}})
    assert a.calls > 0 and b.calls > 0  # the per-key fingerprint entry is new for "a" too

    a, b = Sine(scale=1.0), Sine(scale=2.0)
    changed_b_only = {**FINGERPRINT, "representations": {"a": 1, "b": 3}}
    cache2 = build(tmp_path, {"a": a, "b": b}, fingerprint=changed_b_only)
    assert a.calls == 0 and b.calls > 0
    assert cache2.paths["a"] == cache.paths["a"] and cache2.paths["b"] != cache.paths["b"]


@pytest.mark.parametrize(
    "change",
    [
        {"fingerprint": {**FINGERPRINT, "size": 9}},
        {"fingerprint": {**FINGERPRINT, "view": {"mean": 0.4, "std": 0.25}}},
        {"dtype": torch.float32},
        {"max_dim": 16},
        {"rep": Sine(scale=4.0)},  # representation parameters shown in its repr
    ],
)
def test_any_change_gives_a_new_file(tmp_path, change):
    base = build(tmp_path, {"sine": Sine()})
    rep = change.pop("rep", Sine())
    other = build(tmp_path, {"sine": rep}, **change)
    assert rep.calls > 0 and other.paths["sine"] != base.paths["sine"]
    assert base.paths["sine"].is_file()


def test_projection_seed_changes_the_file_only_when_projecting(tmp_path):
    projected = build(tmp_path, {"sine": Sine()}, max_dim=16, seed=0)
    assert build(tmp_path, {"sine": Sine()}, max_dim=16, seed=1).paths != projected.paths
    plain = build(tmp_path, {"sine": Sine()}, seed=0)
    rep = Sine()
    assert build(tmp_path, {"sine": rep}, seed=1).paths == plain.paths and rep.calls == 0


def test_interrupted_build_is_not_reused(tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(tmp_path, {"sine": Sine(fail_after=3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the partial file was removed
    rep = Sine()
    cache = build(tmp_path, {"sine": rep}, dtype=torch.float32)
    assert rep.calls > 0
    np.testing.assert_allclose(cache["sine"](torch.arange(N)).numpy(), reference_rows(), atol=1e-5)


def test_array_without_metadata_is_rebuilt(tmp_path):
    """A hard crash after the array was renamed but before the metadata was written."""
    path = build(tmp_path, {"sine": Sine()}).paths["sine"]
    path.with_suffix(".json").unlink()
    np.save(path, np.zeros((N, 1), np.float16))  # garbage in place
    rep = Sine()
    cache = build(tmp_path, {"sine": rep}, dtype=torch.float16)
    assert rep.calls > 0 and cache.dims["sine"] == int(np.prod(SHAPE))


def test_build_runs_in_eval_mode_and_restores_the_mode(tmp_path):
    rep = Sine().train()
    build(tmp_path, {"sine": rep})
    assert rep.calls > 0 and rep.ran_in_training_mode is False and rep.training


def test_non_deterministic_representations_are_skipped(tmp_path):
    noisy = Noisy()
    cache = build(tmp_path, {"noisy": noisy, "sine": Sine()})
    assert "noisy" not in cache and "sine" in cache and cache.keys() == ["sine"]
    assert noisy.calls == 0
    assert not any("noisy" in p.name for p in tmp_path.iterdir())


def test_loader_must_visit_each_sample_once(tmp_path):
    dataset = IndexedImages()
    dropping = DataLoader(dataset, batch_size=8, drop_last=True)
    with pytest.raises(DataError, match="unvisited"):
        build(tmp_path, {"sine": Sine()}, loader=dropping)
    twice = DataLoader(dataset, batch_size=10, sampler=list(range(N)) + [5])  # sample 5 comes back
    with pytest.raises(DataError, match="twice"):
        build(tmp_path, {"sine": Sine()}, loader=twice)
    assert not any(p.suffix == ".json" for p in tmp_path.iterdir())


def test_bad_arguments_raise_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="float16 or torch.float32"):
        build(tmp_path, {"sine": Sine()}, dtype=torch.bfloat16)
    with pytest.raises(ConfigError, match="not serialisable"):
        build(tmp_path, {"sine": Sine()}, fingerprint={"dataset": object()})


# ---------------------------------------------------------------------------- random projection
def test_projection_shape_and_determinism():
    x = torch.randn(5, 3000, generator=torch.Generator().manual_seed(0))
    p = RandomProjection(3000, 64, seed=7)
    y = p(x)
    assert y.shape == (5, 64) and y.dtype == torch.float32
    assert torch.equal(y, RandomProjection(3000, 64, seed=7)(x))
    assert not torch.allclose(y, RandomProjection(3000, 64, seed=8)(x))
    # P spans several generation blocks; kept resident or regenerated per call, it is the same matrix.
    streamed = RandomProjection(3000, 64, seed=7, resident_bytes=0)
    assert not streamed.resident
    torch.testing.assert_close(streamed(x), y, rtol=1e-5, atol=1e-5)
    matrix = p.matrix().double()
    np.testing.assert_allclose((x.double() @ matrix).numpy(), y.double().numpy(), rtol=1e-4, atol=1e-4)
    assert abs(matrix.mean().item()) < 0.01 and abs(matrix.std().item() * 8 - 1) < 0.02  # N(0, 1/m)


def test_projection_preserves_pairwise_distances():
    x = torch.randn(64, 5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = RandomProjection(5000, 1024, seed=0)(x.float()).double()
    ratio = torch.pdist(y) / torch.pdist(x)
    assert (ratio - 1).abs().max() < 0.10
    assert (ratio - 1).abs().mean() < 0.03


def test_cache_stores_projection_above_max_dim(tmp_path):
    cache = build(tmp_path, {"wide": Sine(), "narrow": Noisy()}, max_dim=32, dtype=torch.float32, seed=3)
    assert cache.dims == {"wide": 32}
    with torch.no_grad():
        direct = Sine()(eval_view(IndexedImages().images))
    expected = direct.double() @ RandomProjection(direct.shape[1], 32, seed=3).matrix().double()
    np.testing.assert_allclose(cache["wide"](torch.arange(N)).numpy(), expected.numpy(), atol=1e-4)
    unprojected = build(tmp_path, {"sine": Sine()}, max_dim=1000)
    assert unprojected.dims == {"sine": int(np.prod(SHAPE))}


# ---------------------------------------------------------------------------- real representations
def test_real_representations_cached_and_invalidated_by_their_settings(tmp_path):
    registry = pytest.importorskip("mvmr.representations.registry")
    make = registry.build_representation
    reps = {
        "hog": make("hog", {"pool": 4}, in_channels=3, image_size=8),
        "scatnet": make("scatnet", {"J": 1, "L": 4}, in_channels=3, image_size=8),
    }
    cache = build(tmp_path, reps, dtype=torch.float32)
    x = eval_view(IndexedImages().images)
    for key, rep in reps.items():
        np.testing.assert_allclose(cache[key](torch.arange(N)).numpy(), rep(x).numpy(), rtol=1e-5, atol=1e-6)
    finer = {"hog": make("hog", {"pool": 4, "nbins": 12}, in_channels=3, image_size=8), "scatnet": reps["scatnet"]}
    rebuilt = build(tmp_path, finer, dtype=torch.float32)
    assert rebuilt.paths["hog"] != cache.paths["hog"] and rebuilt.dims["hog"] == cache.dims["hog"] // 2
    assert rebuilt.paths["scatnet"] == cache.paths["scatnet"]


def test_training_step_from_float16_rows_equals_the_float32_upcast(tmp_path):
    """The step reads cached rows in their storage dtype (float16) and the loss upcasts them; its loss and
    gradients equal those of the same rows handed over as float32 (what the step did before)."""
    from mvmr.config import load_config
    from mvmr.data import DatasetInfo
    from mvmr.methods.pretrain import MVMRPretrainModule

    info = DatasetInfo(n_classes=10, channels=1, mean=(0.5,), std=(0.25,))
    cfg = load_config(
        None,
        [
            "encoder.backbone=resnet18",
            "encoder.out_dim=32-32",
            "dataset.size=16",
            "fp16=false",
            "representations=[{name: pixels, weight: 1.0}, {name: hog, weight: 2.0, standardize: true},"
            " {name: local_std, weight: 1.0}]",
            "probe.enabled=false",
        ],
    )
    torch.manual_seed(0)
    module = MVMRPretrainModule(cfg, info)
    module.log = module.log_dict = lambda *a, **k: None
    images = torch.randint(0, 256, (12, 1, 16, 16), dtype=torch.uint8)
    data = DataLoader(TensorDataset(images, torch.zeros(12), torch.arange(12)), batch_size=5)
    cache = RepresentationCache.build(dict(module.representations), data, module.eval_view, tmp_path, {"t": 1})
    assert all(np.load(path).dtype == np.float16 for path in cache.paths.values())

    class Float32Rows:  # the same rows, read as float32
        def __init__(self, rows):
            self.rows = rows

        def read(self, index):
            return self.rows(index)

    index = torch.tensor([7, 0, 11, 3, 3, 9, 5, 2])
    results = []
    for readers in (cache, {key: Float32Rows(cache[key]) for key in cache.keys()}):
        module.representation_cache = readers
        module.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same views
        loss = module.training_step((images[index], torch.full((8,), -1), index), 0)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
