"""distance_covariance_sqr / covariance_from_centred and the objective's dCov² terms against dcor (float64)."""

import dcor
import numpy as np
import pytest
import torch

from mvmr.errors import ConfigError
from mvmr.losses import (
    MVMRObjective,
    centred_distances,
    covariance_from_centred,
    distance_correlation,
    distance_covariance_sqr,
)
from mvmr.losses import objective as objective_module


def dependent_pair(batch: int, p: int, q: int, seed: int, dtype=torch.float64):
    """x (B, p) and y (B, q) = a nonlinear function of x plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, p, generator=g, dtype=dtype)
    mix = torch.randn(p, q, generator=g, dtype=dtype) / p**0.5
    y = torch.tanh(x @ mix) + 0.5 * torch.randn(batch, q, generator=g, dtype=dtype)
    return x, y


def reference(x, y, unbiased: bool) -> float:
    """dcor's dCov² (V) or u_dCov² (U) of two tensors, flattened from dim 1, in float64."""
    xn = x.detach().double().reshape(len(x), -1).numpy()
    yn = y.detach().double().reshape(len(y), -1).numpy()
    return (dcor.u_distance_covariance_sqr if unbiased else dcor.distance_covariance_sqr)(xn, yn)


# ---------------------------------------------------------------------------------------------- the functions
@pytest.mark.parametrize("batch,p,q", [(8, 1, 1), (8, 3, 5), (17, 10, 2), (32, 64, 7), (12, 3000, 4)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_matches_dcor_library_float64(batch, p, q, unbiased):
    x, y = dependent_pair(batch, p, q, seed=batch + p + q)
    y = 3.0 * y  # a scale other than 1: dCov² is not scale-free
    for chunk_size in (None, 7):  # (12, 3000): several Gram chunks
        ours = distance_covariance_sqr(x, y, unbiased=unbiased, chunk_size=chunk_size)
        assert ours.dtype == torch.float64 and ours.dim() == 0
        assert ours.item() == pytest.approx(reference(x, y, unbiased), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_covariance_from_centred_reuses_centred_matrices(unbiased):
    x, y = dependent_pair(20, 6, 3, seed=1)
    w = torch.randn(20, 4, dtype=torch.float64)
    cx, cy, cw = (centred_distances(t, unbiased) for t in (x, y, w))
    assert covariance_from_centred(cx, cy, unbiased).item() == pytest.approx(reference(x, y, unbiased), rel=1e-9)
    assert covariance_from_centred(cw, cy, unbiased).item() == pytest.approx(reference(w, y, unbiased), rel=1e-9)
    # the V-statistic's dVar² of x is dCov²(x, x)
    assert covariance_from_centred(cx, cx, unbiased).item() == pytest.approx(reference(x, x, unbiased), rel=1e-9)


def test_scales_with_the_inputs_unlike_dcor():
    x, y = dependent_pair(16, 5, 3, seed=2)
    for unbiased in (False, True):
        base = distance_covariance_sqr(x, y, unbiased=unbiased).item()
        scaled = distance_covariance_sqr(-4.0 * x, 0.5 * y + 7.0, unbiased=unbiased).item()
        assert scaled == pytest.approx(2.0 * base, rel=1e-9)
        assert distance_correlation(-4.0 * x, 0.5 * y + 7.0, unbiased=unbiased).item() == pytest.approx(
            distance_correlation(x, y, unbiased=unbiased).item(), rel=1e-9
        )


def test_unbiased_can_be_negative_like_dcor():
    g = torch.Generator().manual_seed(0)
    values = []
    for _ in range(10):  # independent samples: u_dCov² scatters around 0, dCov² (V) stays > 0
        x, y = (
            torch.randn(16, 3, generator=g, dtype=torch.float64),
            torch.randn(16, 4, generator=g, dtype=torch.float64),
        )
        values.append(distance_covariance_sqr(x, y, unbiased=True).item())
        assert values[-1] == pytest.approx(reference(x, y, True), rel=1e-9, abs=1e-14)
        assert distance_covariance_sqr(x, y).item() > 0
    assert min(values) < 0


def test_constant_input_gives_zero():
    x, _ = dependent_pair(10, 4, 2, seed=3)
    constant = torch.full((10, 3), 2.5, dtype=torch.float64)
    assert distance_covariance_sqr(x, constant).item() == 0.0
    assert distance_covariance_sqr(x, constant, unbiased=True).item() == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("unbiased", [False, True])
def test_gradcheck_finite_differences(unbiased):
    x, y = dependent_pair(8, 4, 3, seed=6)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: distance_covariance_sqr(a, b, unbiased=unbiased, chunk_size=3), (x, y), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("unbiased", [False, True])
def test_coinciding_rows_give_finite_gradients(dtype, unbiased):
    x, y = dependent_pair(10, 6, 4, seed=7, dtype=dtype)
    x[3] = x[1]
    x[8] = x[1]
    y[5] = y[0]
    x.requires_grad_(True)
    y.requires_grad_(True)
    value = distance_covariance_sqr(x, y, unbiased=unbiased)
    value.backward()
    assert torch.isfinite(value) and torch.all(torch.isfinite(x.grad)) and torch.all(torch.isfinite(y.grad))
    assert value.item() == pytest.approx(reference(x, y, unbiased), rel=1e-4 if dtype == torch.float32 else 1e-9)


def test_autocast_bf16_upcasts_to_float32():
    x, y = dependent_pair(32, 16, 8, seed=8, dtype=torch.float32)
    weight = torch.randn(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = x @ weight
        assert h.dtype == torch.bfloat16
        inside = distance_covariance_sqr(h, y)
        inside_u = distance_covariance_sqr(h, y, unbiased=True)
    assert inside.dtype == torch.float32 and inside_u.dtype == torch.float32
    assert inside.item() == pytest.approx(reference(h, y, False), rel=1e-5)
    assert inside_u.item() == pytest.approx(reference(h, y, True), rel=1e-4)
    # float32 inputs under autocast: the Gram matmul must not be run in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = distance_covariance_sqr(x, y)
    assert under.item() == pytest.approx(distance_covariance_sqr(x, y).item(), rel=1e-6)


def test_input_errors():
    with pytest.raises(ValueError, match="distance covariance needs paired samples, got batch sizes 5 and 6"):
        distance_covariance_sqr(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ConfigError, match="at least 4 samples"):
        distance_covariance_sqr(torch.randn(3, 2), torch.randn(3, 2), unbiased=True)
    with pytest.raises(ConfigError, match="at least 4 samples"):
        covariance_from_centred(torch.zeros(3, 3), torch.zeros(3, 3), unbiased=True)


# ---------------------------------------------------------------------------------------------- the objective
def batch(seed: int = 0, size: int = 24, dim: int = 16, dtype=torch.float64):
    """z̄, z (B, D) and two representations of other dimensions, related to the embeddings."""
    g = torch.Generator().manual_seed(seed)
    z_bar = torch.randn(size, dim, generator=g, dtype=dtype) * 0.8
    z = z_bar + 0.3 * torch.randn(size, dim, generator=g, dtype=dtype)
    reps = {
        "hog": 5.0 * torch.tanh(z_bar[:, :5] * 2) + 0.1 * torch.randn(size, 5, generator=g, dtype=dtype),
        "pixels": torch.randn(size, 3, 4, 4, generator=g, dtype=dtype),
    }
    return z_bar, z, reps


def reference_terms(z_bar, z, reps, statistics, default, unbiased=False, normalize=False):
    """Independent float64 dependence terms from dcor, keyed by the names the objective logs."""
    zb, zz = z_bar.detach().double(), z.detach().double()
    if normalize:
        zb, zz = zb / zb.norm(dim=1, keepdim=True), zz / zz.norm(dim=1, keepdim=True)

    def term(statistic, a):
        if statistic == "dcov":
            return -reference(a, zz, unbiased)
        an, zn = a.reshape(len(a), -1).numpy(), zz.numpy()
        return 1 - (dcor.u_distance_correlation_sqr(an, zn) if unbiased else dcor.distance_correlation(an, zn))

    terms = {f"{default}_zz": term(default, zb)}
    for name, rep in reps.items():
        statistic = statistics.get(name) or default
        terms[f"{statistic}/{name}"] = term(statistic, rep.double())
    return terms


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_dcov_terms_and_weighted_loss_match_dcor_library(unbiased, normalize):
    z_bar, z, reps = batch(seed=1)
    weights = {"hog": 0.5, "pixels": -2.0}
    objective = MVMRObjective(
        mse_weight=0.0, std_weight=0.0, dcor_weight=0.7, unbiased=unbiased, normalize_z=normalize, statistic="dcov"
    )
    loss, terms = objective(z_bar, z, reps, weights)
    ref = reference_terms(z_bar, z, reps, {}, "dcov", unbiased=unbiased, normalize=normalize)
    assert set(terms) == {"mse", "std", "dcov_zz", "dcov/hog", "dcov/pixels", "loss"}
    for key, value in ref.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-9, abs=1e-12), key
    expected = 0.7 * ref["dcov_zz"] + 0.5 * ref["dcov/hog"] - 2.0 * ref["dcov/pixels"]
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    # with the other terms on: they are unchanged by the statistic
    full = MVMRObjective(
        mse_weight=2.0, std_weight=3.0, dcor_weight=0.7, unbiased=unbiased, normalize_z=normalize, statistic="dcov"
    )
    loss_full, terms_full = full(z_bar, z, reps, weights)
    _, terms_dcor = MVMRObjective(unbiased=unbiased, normalize_z=normalize)(z_bar, z, reps, weights)
    assert terms_full["mse"].item() == terms_dcor["mse"].item() and terms_full["std"].item() == terms_dcor["std"].item()
    assert loss_full.item() == pytest.approx(
        expected + 2.0 * terms_dcor["mse"].item() + 3.0 * terms_dcor["std"].item(), rel=1e-9
    )


@pytest.mark.parametrize("unbiased", [False, True])
def test_per_name_override(unbiased):
    z_bar, z, reps = batch(seed=2)
    weights = {"hog": 1.5, "pixels": 0.25}
    # dCor by default, dCov² for hog only
    loss, terms = MVMRObjective(
        dcor_weight=0.0, mse_weight=0.0, std_weight=0.0, unbiased=unbiased, statistics={"hog": "dcov"}
    )(z_bar, z, reps, weights)
    ref = reference_terms(z_bar, z, reps, {"hog": "dcov"}, "dcor", unbiased=unbiased)
    assert set(terms) == {"mse", "std", "dcor_zz", "dcov/hog", "dcor/pixels", "loss"}
    for key, value in ref.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert loss.item() == pytest.approx(1.5 * ref["dcov/hog"] + 0.25 * ref["dcor/pixels"], rel=1e-9)
    # dCov² by default, dCor for pixels; None (and unknown names) fall back to the default
    loss, terms = MVMRObjective(
        dcor_weight=0.3,
        mse_weight=0.0,
        std_weight=0.0,
        unbiased=unbiased,
        statistic="dcov",
        statistics={"pixels": "dcor", "hog": None, "absent": "dcor"},
    )(z_bar, z, reps, weights)
    ref = reference_terms(z_bar, z, reps, {"pixels": "dcor"}, "dcov", unbiased=unbiased)
    assert set(terms) == {"mse", "std", "dcov_zz", "dcov/hog", "dcor/pixels", "loss"}
    for key, value in ref.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert loss.item() == pytest.approx(
        0.3 * ref["dcov_zz"] + 1.5 * ref["dcov/hog"] + 0.25 * ref["dcor/pixels"], rel=1e-9
    )


def test_explicit_dcor_is_exactly_the_default():
    z_bar, z, reps = batch(seed=3)
    weights = {"hog": 1.0, "pixels": -0.5}
    loss, terms = MVMRObjective()(z_bar, z, reps, weights)
    loss_explicit, terms_explicit = MVMRObjective(statistic="dcor", statistics={"hog": "dcor", "pixels": None})(
        z_bar, z, reps, weights
    )
    assert torch.equal(loss, loss_explicit)
    assert terms.keys() == terms_explicit.keys() == {"mse", "std", "dcor_zz", "dcor/hog", "dcor/pixels", "loss"}
    assert all(torch.equal(terms[k], terms_explicit[k]) for k in terms)


def test_standardized_and_powered_representation_in_dcov():
    z_bar, z, reps = batch(seed=4)
    weights = {"hog": 2.0, "pixels": 1.0}
    _, terms = MVMRObjective(statistic="dcov", standardized=["hog"], powers={"hog": 0.5})(z_bar, z, reps, weights)
    flat = reps["hog"].numpy()
    powered = np.sign(flat) * np.sqrt(np.abs(flat))
    z_scored = torch.from_numpy((powered - powered.mean(0)) / powered.std(0))
    assert terms["dcov/hog"].item() == pytest.approx(-reference(z_scored, z, False), rel=1e-9)


def test_positive_weight_maximises_dcov():
    """loss = w·(−dCov²(φ, z)): its gradient is −w times the gradient of dCov²."""
    z_bar, z, reps = batch(seed=5)
    z = z.clone().requires_grad_(True)
    objective = MVMRObjective(mse_weight=0, std_weight=0, dcor_weight=0, statistic="dcov")
    loss, _ = objective(z_bar, z, {"hog": reps["hog"]}, {"hog": 0.8})
    (grad,) = torch.autograd.grad(loss, z)
    z_ref = z.detach().clone().requires_grad_(True)
    (grad_ref,) = torch.autograd.grad(distance_covariance_sqr(reps["hog"], z_ref), z_ref)
    torch.testing.assert_close(grad, -0.8 * grad_ref)
    # a small step along −grad(loss) raises dCov²
    stepped = z.detach() - 1e-2 * grad
    assert distance_covariance_sqr(reps["hog"], stepped) > distance_covariance_sqr(reps["hog"], z.detach())


@pytest.mark.parametrize("unbiased", [False, True])
def test_gradient_matches_finite_differences(unbiased):
    z_bar, z, reps = batch(seed=6, size=10, dim=6)
    objective = MVMRObjective(
        std_margin=2.0, dcor_weight=0.5, unbiased=unbiased, statistic="dcov", statistics={"pixels": "dcor"}
    )
    weights = {"hog": 0.3, "pixels": 0.2}
    z_bar.requires_grad_(True)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: objective(a, b, reps, weights)[0], (z_bar, z), eps=1e-6, atol=1e-6)


def test_centred_z_computed_once_per_step(monkeypatch):
    calls = []

    def counting(x, *args, **kwargs):
        calls.append(x)
        return centred_distances(x, *args, **kwargs)

    monkeypatch.setattr(objective_module, "centred_distances", counting)
    z_bar, z, reps = batch(seed=7)
    MVMRObjective(statistic="dcov", statistics={"pixels": "dcor"})(z_bar, z, reps, {"hog": 1.0, "pixels": 1.0})
    assert len(calls) == 4  # z once, z̄ once, one per representation
    assert sum(x is z for x in calls) == 1


def test_autocast_bf16_dcov_objective_in_float32():
    z_bar, z, reps = batch(seed=8, dtype=torch.float32)
    weight = torch.eye(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zb16, z16 = z_bar @ weight, z @ weight
        assert z16.dtype == torch.bfloat16
        loss, terms = MVMRObjective(statistic="dcov")(zb16, z16, reps, {"hog": 1.0, "pixels": 1.0})
    assert loss.dtype == torch.float32
    ref = reference_terms(zb16.float(), z16.float(), reps, {}, "dcov")
    for key, value in ref.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-4), key


def test_statistic_values_are_validated():
    with pytest.raises(ValueError, match=r"statistic must be one of \['dcor', 'dcov'\], got 'dcov2'"):
        MVMRObjective(statistic="dcov2")
    with pytest.raises(ValueError, match=r"one of \['dcor', 'dcov'\] \(or None\), got \{'hog': 'cov'\}"):
        MVMRObjective(statistics={"hog": "cov", "pixels": "dcor"})
