"""loss.gather_dim: sketched representations under DDP (2 CPU processes, gloo), and the traffic report.

The gloo run computes the loss with gather_dim = None (exact), SMALL_K (every wide φ sketched), the
recommended k (only the 30k-d φ sketched) and BIG_K (>= every d_k: nothing sketched), counting the bytes
all_gather returns and all_reduce reduces; the tests compare it with one process on the whole batch.
"""

import pytest
import torch
import torch.distributed as dist
from gloo import init_gloo, run_gloo, save_rank_results

from mvmr.losses import MVMRObjective, distance_correlation
from mvmr.losses import objective as objective_module
from mvmr.losses import sketch as sketch_module
from mvmr.losses.objective import signed_power, standardize_columns
from mvmr.losses.sketch import (
    RECOMMENDED_GATHER_DIM,
    SKETCH_DCOR_TOLERANCE,
    CountSketch,
    global_column_moments,
    sketch_seed,
)
from mvmr.losses.traffic import gathered_bytes_per_step

WORLD = 2
LOCAL_BATCH = 64
N = WORLD * LOCAL_BATCH
EMBED = 16
SMALL_K = 64
BIG_K = 30000
DIMS = {"wide": 300, "plain": 30000, "narrow": 40}
DTYPES = {"wide": torch.float64, "plain": torch.float64, "narrow": torch.float32}
WEIGHTS = {"wide": 0.7, "plain": -0.4, "narrow": 0.5}
GATHER_DIMS = (None, SMALL_K, RECOMMENDED_GATHER_DIM, BIG_K)
# relative error of ∂L/∂z for the recommended k on this data (measured 0.005 at k = 8192 and 0.008 at 4096: one
# 0.4-weighted sketched term among exact ones)
GRAD_TOLERANCE = 0.05


def objective(gather_dim=None, gather=True) -> MVMRObjective:
    """ "wide" is powered, standardised (on the global batch) and a dCov² term; "plain" and "narrow" are dCor."""
    return MVMRObjective(
        std_margin=2.0,
        gather=gather,
        gather_dim=gather_dim,
        standardized=("wide",),
        powers={"wide": 0.5},
        statistics={"wide": "dcov"},
    )


def full_batch():
    """z̄, z (N, EMBED) and φ (N, d_k) depending on a common latent, fixed by a seed. "plain" is structured like
    ScatNet: non-negative, low-rank plus noise, with a large mean."""
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(N, 8, generator=g, dtype=torch.float64)
    z_bar = torch.tanh(latent @ torch.randn(8, EMBED, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(
        N, EMBED, generator=g, dtype=torch.float64
    )
    z = z_bar + 0.5 * torch.randn(N, EMBED, generator=g, dtype=torch.float64)
    mix = torch.randn(8, DIMS["plain"], generator=g, dtype=torch.float64)
    reps = {
        "wide": (latent[:, :3, None, None] + torch.randn(N, 3, 10, 10, generator=g, dtype=torch.float64)).abs(),
        "plain": (
            torch.relu(latent @ mix) + 5.0 + 0.5 * torch.rand(N, DIMS["plain"], generator=g, dtype=torch.float64)
        ),
        "narrow": (latent[:, :1] + torch.randn(N, DIMS["narrow"], generator=g, dtype=torch.float64)).float(),
    }
    return z_bar, z, reps


def loss_and_grads(obj: MVMRObjective, z_bar, z, reps):
    """loss, detached terms and the gradients w.r.t. the leaves z̄ and z."""
    z_bar, z = z_bar.clone().requires_grad_(True), z.clone().requires_grad_(True)
    loss, terms = obj(z_bar, z, reps, WEIGHTS)
    loss.backward()
    return {"loss": loss.detach(), "terms": terms, "grad_z_bar": z_bar.grad, "grad_z": z.grad}


# ---------------------------------------------------------------------------------------------- the gloo run
class _Counter:
    """Counts the bytes all_gather returns and all_reduce reduces (forward / backward) and the sketch calls."""

    def __init__(self):
        self.phase = "forward"
        self.counts = {"gathered": 0, "reduced_forward": 0, "reduced_backward": 0, "sketches": 0}
        all_gather, all_reduce, sketch_call = dist.all_gather, dist.all_reduce, CountSketch.__call__

        def counted_gather(tensor_list, tensor, *args, **kwargs):
            result = all_gather(tensor_list, tensor, *args, **kwargs)
            self.counts["gathered"] += sum(t.numel() * t.element_size() for t in tensor_list)
            return result

        def counted_reduce(tensor, *args, **kwargs):
            self.counts[f"reduced_{self.phase}"] += tensor.numel() * tensor.element_size()
            return all_reduce(tensor, *args, **kwargs)

        def counted_sketch(sketch, *args, **kwargs):
            self.counts["sketches"] += 1
            return sketch_call(sketch, *args, **kwargs)

        dist.all_gather, dist.all_reduce, CountSketch.__call__ = counted_gather, counted_reduce, counted_sketch


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    init_gloo(rank, port, WORLD, timeout_s=120)
    try:
        z_bar, z, reps = full_batch()
        mine = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        local = {name: rep[mine] for name, rep in reps.items()}
        results = {}
        counter = _Counter()
        for gather_dim in GATHER_DIMS:
            obj = objective(gather_dim)
            counter.counts = dict.fromkeys(counter.counts, 0)
            z_bar_leaf, z_leaf = z_bar[mine].clone().requires_grad_(True), z[mine].clone().requires_grad_(True)
            counter.phase = "forward"
            loss, terms = obj(z_bar_leaf, z_leaf, local, WEIGHTS)
            counter.phase = "backward"
            loss.backward()
            results[gather_dim] = {
                "loss": loss.detach(),
                "terms": terms,
                "grad_z_bar": z_bar_leaf.grad,
                "grad_z": z_leaf.grad,
                "counts": dict(counter.counts),
            }
            if gather_dim == SMALL_K:
                sketch = obj.sketch("plain", DIMS["plain"])
                results["sketch"] = {
                    "source": sketch.source,
                    "signs": sketch.signs,
                    "of_common_rows": sketch(reps["plain"][:4]),
                }  # the same rows on both ranks
        save_rank_results(out_dir, rank, results)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Each rank's results of the gloo run."""
    return run_gloo(_worker, WORLD, tmp_path_factory.mktemp("gather_sketch"), timeout_s=180)


def sketched_reference(k: int):
    """One process, whole batch: every φ with d > k powered, standardised and multiplied by the dense matrix
    of its count sketch (independently of CountSketch.__call__), then the exact objective on the result."""
    z_bar, z, reps = full_batch()
    sketched = {}
    for name, rep in reps.items():
        flat = rep.reshape(N, -1).double()
        if flat.shape[1] <= k:
            sketched[name] = rep
            continue
        if name == "wide":
            flat = standardize_columns(signed_power(flat, 0.5))
        sketched[name] = flat @ CountSketch(flat.shape[1], k, sketch_seed(name)).matrix()
    plain = MVMRObjective(
        std_margin=2.0,
        standardized=[n for n in ("wide",) if DIMS[n] <= k],
        powers={n: 0.5 for n in ("wide",) if DIMS[n] <= k},
        statistics={"wide": "dcov"},
    )
    return loss_and_grads(plain, z_bar, z, sketched)


def assert_rank_matches(result, ref, rank, rtol=1e-9):
    """The rank's loss and terms equal the reference; its leaf gradients are WORLD × the reference's rows (every
    rank backpropagates the same global loss; DDP divides parameter gradients by WORLD)."""
    assert result["loss"].item() == pytest.approx(ref["loss"].item(), rel=rtol, abs=1e-12)
    assert set(result["terms"]) == set(ref["terms"])
    for key, value in ref["terms"].items():
        assert result["terms"][key].item() == pytest.approx(value.item(), rel=rtol, abs=1e-12), key
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    for key in ("grad_z_bar", "grad_z"):
        torch.testing.assert_close(result[key], WORLD * ref[key][rows], rtol=rtol, atol=1e-12)


def test_sketched_ddp_loss_and_gradients_equal_one_process_with_the_same_sketch(ranks):
    ref = sketched_reference(SMALL_K)
    exact = loss_and_grads(objective(), *full_batch())
    for rank, result in enumerate(ranks):
        assert result[SMALL_K]["counts"]["sketches"] == 2  # wide and plain
        assert_rank_matches(result[SMALL_K], ref, rank)
    # and the sketch does change the terms at k = 64: the comparison can tell them apart
    assert abs(ref["terms"]["dcor/plain"].item() - exact["terms"]["dcor/plain"].item()) > 1e-4
    assert abs(ref["terms"]["dcov/wide"].item() - exact["terms"]["dcov/wide"].item()) > 1e-4


def test_exact_ddp_equals_one_process(ranks):
    ref = loss_and_grads(objective(), *full_batch())
    for rank, result in enumerate(ranks):
        assert result[None]["counts"]["sketches"] == 0
        assert_rank_matches(result[None], ref, rank)


def test_recommended_k_is_within_tolerance_of_the_exact_terms(ranks):
    for result in ranks:
        exact, sketched = result[None], result[RECOMMENDED_GATHER_DIM]
        assert sketched["counts"]["sketches"] == 1  # plain only: wide (300) and narrow (40) are exact
        error = abs(sketched["terms"]["dcor/plain"].item() - exact["terms"]["dcor/plain"].item())
        assert 0 < error <= SKETCH_DCOR_TOLERANCE
        for key in ("mse", "std", "dcor_zz", "dcov/wide", "dcor/narrow"):
            assert torch.equal(sketched["terms"][key], exact["terms"][key]), key
        assert sketched["loss"].item() == pytest.approx(exact["loss"].item(), abs=0.4 * SKETCH_DCOR_TOLERANCE)
        for key in ("grad_z", "grad_z_bar"):
            relative = ((sketched[key] - exact[key]).norm() / exact[key].norm()).item()
            assert relative <= GRAD_TOLERANCE, (key, relative)
        assert not torch.equal(sketched["grad_z"], exact["grad_z"])


def test_sketch_is_identical_on_every_rank(ranks):
    first = ranks[0]["sketch"]
    reference = CountSketch(DIMS["plain"], SMALL_K, sketch_seed("plain"))  # and in this process
    for result in ranks:
        assert torch.equal(result["sketch"]["source"], first["source"])
        assert torch.equal(result["sketch"]["signs"], first["signs"])
        assert torch.equal(result["sketch"]["of_common_rows"], first["of_common_rows"])
    assert torch.equal(first["source"], reference.source) and torch.equal(first["signs"], reference.signs)


def test_representations_no_wider_than_k_are_gathered_exactly(ranks):
    for result in ranks:
        exact = result[None]
        assert torch.equal(result[SMALL_K]["terms"]["dcor/narrow"], exact["terms"]["dcor/narrow"])  # 40 <= 64
        wide_k = result[BIG_K]
        assert wide_k["counts"]["sketches"] == 0
        assert torch.equal(wide_k["loss"], exact["loss"])
        assert all(torch.equal(wide_k["terms"][key], value) for key, value in exact["terms"].items())
        assert torch.equal(wide_k["grad_z"], exact["grad_z"]) and torch.equal(wide_k["grad_z_bar"], exact["grad_z_bar"])


@pytest.mark.parametrize("gather_dim", GATHER_DIMS)
def test_bytes_report_matches_the_collectives(ranks, gather_dim):
    report = objective(gather_dim).traffic(WORLD, LOCAL_BATCH, EMBED, DIMS, DTYPES, compute_dtype=torch.float64)
    for result in ranks:
        counts = result[gather_dim]["counts"]
        assert counts["gathered"] == sum(report.gathered.values())
        assert counts["reduced_forward"] == sum(report.forward_reduced.values())
        assert counts["reduced_backward"] == report.backward_bytes
        assert counts["gathered"] + counts["reduced_forward"] == report.forward_bytes
    if gather_dim == SMALL_K:
        assert set(report.sketched) == {"wide", "plain"} and report.forward_reduced == {"wide": 2 * 300 * 8}


# ---------------------------------------------------------------------------------------------- one process
def test_without_distributed_gather_dim_changes_nothing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sketched without DDP")

    monkeypatch.setattr(CountSketch, "__call__", refuse)
    monkeypatch.setattr(objective_module, "global_column_moments", refuse)
    batch = full_batch()
    exact = loss_and_grads(objective(), *batch)
    for gather_dim in (None, SMALL_K):
        result = loss_and_grads(objective(gather_dim), *batch)
        assert torch.equal(result["loss"], exact["loss"]) and torch.equal(result["grad_z"], exact["grad_z"])
    with pytest.raises(ValueError, match="gather_dim"):
        MVMRObjective(gather_dim=0)
    with pytest.raises(ValueError, match="gather_dim"):
        MVMRObjective(gather_dim=True)


@pytest.mark.parametrize("dim,k", [(1000, 64), (1000, 7), (50, 64)])
def test_count_sketch_is_the_signed_balanced_hash_it_describes(monkeypatch, dim, k):
    x = torch.randn(9, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sketch = CountSketch(dim, k, seed=3)
    expected = x @ sketch.matrix()
    torch.testing.assert_close(sketch(x), expected, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(sketch_module, "SKETCH_CHUNK_ELEMENTS", 9 * k * 2)  # chunks of 2k columns
    torch.testing.assert_close(sketch(x), expected, rtol=1e-12, atol=1e-12)
    assert sketch(x.float()).dtype == torch.float32
    counts = torch.bincount(sketch.buckets(), minlength=k)
    assert counts.max() - counts.min() <= 1  # balanced: every bucket holds ⌊d/k⌋ or ⌈d/k⌉ columns
    assert set(sketch.column_signs().tolist()) == {-1, 1}
    if dim <= k:  # a signed injection: distances (hence dCor) are kept exactly
        torch.testing.assert_close(torch.cdist(sketch(x), sketch(x)), torch.cdist(x, x))
    with pytest.raises(ValueError, match="expects"):
        sketch(x[:, :-1])


def test_sketch_seeds_are_fixed_and_differ_by_name_and_seed():
    assert sketch_seed("scatnet") == sketch_seed("scatnet", 0)
    assert len({sketch_seed("scatnet"), sketch_seed("pixels"), sketch_seed("scatnet", 1)}) == 3
    assert sketch_seed("scatnet") == 8805812519477689457  # sha256-based: the same in every process and release
    assert torch.equal(CountSketch(500, 16, 7).source, CountSketch(500, 16, 7).source)
    assert not torch.equal(CountSketch(500, 16, 7).source, CountSketch(500, 16, 8).source)


def test_global_column_moments_without_distributed_are_the_batch_moments():
    x = torch.randn(20, 3, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 5 + 100
    mean, std = global_column_moments(x, 20, torch.float64, lambda t: signed_power(t, 0.5), chunk_columns=4)
    powered = signed_power(x.reshape(20, -1), 0.5)
    torch.testing.assert_close(mean, powered.mean(0), rtol=1e-13, atol=0)
    torch.testing.assert_close(std, powered.std(0, unbiased=False), rtol=1e-10, atol=0)


def test_recommended_k_meets_the_tolerance_on_image_sized_inputs():
    """256 smooth 3×224×224 'images' (150528-d) and an embedding depending on them: |dCor(sketch) − dCor| for
    three sketch seeds at the recommended k."""
    g = torch.Generator().manual_seed(5)
    low = torch.randn(256, 3, 14, 14, generator=g)
    images = torch.nn.functional.interpolate(low, size=224, mode="bilinear", align_corners=False)
    images += 0.2 * torch.randn(images.shape, generator=g)
    flat = images.reshape(256, -1)
    pooled = torch.nn.functional.avg_pool2d(images, 16).reshape(256, -1)
    z = torch.tanh(pooled @ torch.randn(pooled.shape[1], 64, generator=g) / 8) + 0.3 * torch.randn(256, 64, generator=g)
    exact = distance_correlation(flat, z).item()
    assert 0.3 < exact < 0.95
    for seed in range(3):
        approx = distance_correlation(CountSketch(flat.shape[1], RECOMMENDED_GATHER_DIM, seed)(flat), z).item()
        assert 0 < abs(approx - exact) <= SKETCH_DCOR_TOLERANCE, (seed, approx, exact)


def test_traffic_of_the_papers_imagenet_setting():
    """8 ranks × 256, 8192-d embeddings, the authors' five representations at 224 px in bfloat16."""
    dims = {"pixels": 150528, "scatnet": 762048, "augmented_pixels": 150528, "hog": 56448, "local_std": 150528}
    exact = gathered_bytes_per_step(8, 256, 8192, dims, torch.bfloat16)
    assert exact.gathered["z"] == 8 * 256 * 8192 * 4  # the objective upcasts z before gathering
    assert exact.gathered["row_counts"] == 8 * 8  # one int64 per rank, once per step
    assert exact.backward_reduced == {"z_bar": 2048 * 8192 * 4, "z": 2048 * 8192 * 4}
    assert exact.gathered["scatnet"] == 8 * 256 * 762048 * 2
    assert sum(exact.gathered[name] for name in dims) == 8 * 256 * 1270080 * 2
    assert exact.received_bytes == pytest.approx(7 / 8 * sum(exact.gathered.values()) + 2 * 7 / 8 * 2 * 2048 * 8192 * 4)
    assert 4.90e9 < exact.received_bytes < 4.91e9  # 4.55 GB of representations, 0.35 GB for z̄ and z
    sketched = gathered_bytes_per_step(8, 256, 8192, dims, torch.bfloat16, gather_dim=4096, standardized=["scatnet"])
    assert sketched.sketched == {name: (dim, 4096) for name, dim in dims.items()}
    assert sketched.gathered["hog"] == 8 * 256 * 4096 * 4  # sketches travel in float32
    assert sketched.forward_reduced == {"scatnet": 2 * 762048 * 4}
    assert sketched.received_bytes < exact.received_bytes / 9
    line = sketched.summary()
    assert "8 ranks x 256" in line and "Gb/s" in line and "scatnet 762048->4096" in line and "\n" not in line
    assert gathered_bytes_per_step(1, 256, 8192, dims).received_bytes == 0
    assert gathered_bytes_per_step(8, 256, 8192, dims, gather=False).gathered == {}
