"""MVMRObjective: every term against an independent float64 numpy / dcor computation."""

import dcor
import numpy as np
import pytest
import torch

from mvmr.losses import MVMRObjective, distance_correlation


def batch(seed: int = 0, size: int = 24, dim: int = 16, dtype=torch.float64):
    """z̄, z (B, D) and two representations of other dimensions, related to the embeddings."""
    g = torch.Generator().manual_seed(seed)
    z_bar = torch.randn(size, dim, generator=g, dtype=dtype) * 0.8
    z = z_bar + 0.3 * torch.randn(size, dim, generator=g, dtype=dtype)
    reps = {
        "hog": torch.tanh(z_bar[:, :5] * 2) + 0.1 * torch.randn(size, 5, generator=g, dtype=dtype),
        "pixels": torch.randn(size, 3, 4, 4, generator=g, dtype=dtype),
    }
    return z_bar, z, reps


def numpy_terms(z_bar, z, reps, margin=1.0, unbiased=False, normalize=False):
    """Independent float64 reference for every unweighted term."""
    zb, zz = z_bar.detach().double().numpy(), z.detach().double().numpy()
    if normalize:
        zb = zb / np.linalg.norm(zb, axis=1, keepdims=True)
        zz = zz / np.linalg.norm(zz, axis=1, keepdims=True)
    corr = dcor.u_distance_correlation_sqr if unbiased else dcor.distance_correlation

    def hinge(v):
        return np.maximum(0.0, margin - np.sqrt(np.var(v, axis=0, ddof=1) + 1e-4)).mean()

    terms = {"mse": np.mean((zb - zz) ** 2), "std": hinge(zz) + hinge(zb), "dcor_zz": 1 - corr(zb, zz)}
    for name, rep in reps.items():
        terms[f"dcor/{name}"] = 1 - corr(rep.double().reshape(len(rep), -1).numpy(), zz)
    return terms


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_terms_and_weighted_loss_match_numpy(unbiased, normalize):
    z_bar, z, reps = batch(seed=1)
    weights = {"hog": 0.5, "pixels": -2.0}
    objective = MVMRObjective(
        mse_weight=2.0, std_weight=3.0, dcor_weight=0.7, std_margin=1.5, unbiased=unbiased, normalize_z=normalize
    )
    loss, terms = objective(z_bar, z, reps, weights)
    ref = numpy_terms(z_bar, z, reps, margin=1.5, unbiased=unbiased, normalize=normalize)
    assert set(terms) == set(ref) | {"loss"}
    for key, value in ref.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-6, abs=1e-9), key
    expected = (
        2.0 * ref["mse"] + 3.0 * ref["std"] + 0.7 * ref["dcor_zz"] + 0.5 * ref["dcor/hog"] - 2.0 * ref["dcor/pixels"]
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert all(not t.requires_grad for t in terms.values())


def test_std_hinge_is_active():
    z_bar, z, reps = batch(seed=2)
    _, terms = MVMRObjective(std_margin=1.0)(z_bar * 0.5, z * 0.5, {}, {})
    assert terms["std"].item() > 0.5  # std ≈ 0.4–0.5 < γ = 1 in every dimension, for both branches
    _, terms = MVMRObjective(std_margin=1.0)(z_bar * 10, z * 10, {}, {})
    assert terms["std"].item() == 0.0


def test_float32_close_to_float64():
    z_bar, z, reps = batch(seed=3, dtype=torch.float32)
    loss, terms = MVMRObjective()(z_bar, z, reps, {"hog": 1.0, "pixels": 1.0})
    assert loss.dtype == torch.float32
    ref = numpy_terms(z_bar, z, reps)
    for key, value in ref.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_negative_weight_minimises_dependence():
    """w = −1 on (1 − dCor) has the gradient of +dCor: the authors' hand-crafted terms."""
    z_bar, z, reps = batch(seed=4)
    z = z.clone().requires_grad_(True)
    zero = MVMRObjective(mse_weight=0, std_weight=0, dcor_weight=0)
    loss, _ = zero(z_bar, z, {"hog": reps["hog"]}, {"hog": -1.0})
    (grad,) = torch.autograd.grad(loss, z)
    z_ref = z.detach().clone().requires_grad_(True)
    (grad_ref,) = torch.autograd.grad(distance_correlation(reps["hog"], z_ref), z_ref)
    torch.testing.assert_close(grad, grad_ref)


def test_gradients_flow_to_both_branches_not_to_representations():
    z_bar, z, reps = batch(seed=5)
    z_bar.requires_grad_(True)
    z.requires_grad_(True)
    reps["hog"].requires_grad_(True)
    loss, _ = MVMRObjective()(z_bar, z, reps, {"hog": 1.0, "pixels": 1.0})
    loss.backward()
    assert z_bar.grad.abs().sum() > 0 and z.grad.abs().sum() > 0
    assert reps["hog"].grad is None


def test_gradient_matches_finite_differences():
    z_bar, z, reps = batch(seed=6, size=10, dim=6)
    objective = MVMRObjective(std_margin=2.0, dcor_weight=0.5)
    weights = {"hog": 0.3, "pixels": 0.2}
    z_bar.requires_grad_(True)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: objective(a, b, reps, weights)[0], (z_bar, z), eps=1e-6, atol=1e-6)


def test_duplicate_samples_give_finite_gradients():
    z_bar, z, reps = batch(seed=7, dtype=torch.float32)
    z[2] = z[0]
    z_bar[2] = z_bar[0]
    reps["hog"][2] = reps["hog"][0]
    z.requires_grad_(True)
    z_bar.requires_grad_(True)
    loss, _ = MVMRObjective()(z_bar, z, reps, {"hog": 1.0, "pixels": 1.0})
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(z.grad)) and torch.all(torch.isfinite(z_bar.grad))


def test_autocast_bf16_computes_in_float32():
    z_bar, z, reps = batch(seed=8, dtype=torch.float32)
    weight = torch.eye(16) * 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zb16, z16 = z_bar @ weight, z @ weight
        assert z16.dtype == torch.bfloat16
        loss, terms = MVMRObjective()(zb16, z16, reps, {"hog": 1.0, "pixels": 1.0})
    assert loss.dtype == torch.float32
    ref = numpy_terms(zb16.float(), z16.float(), reps)
    for key, value in ref.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_gather_without_distributed_is_local():
    z_bar, z, reps = batch(seed=9)
    weights = {"hog": 1.0, "pixels": 0.5}
    gathered, _ = MVMRObjective(gather=True)(z_bar, z, reps, weights)
    local, _ = MVMRObjective(gather=False)(z_bar, z, reps, weights)
    assert gathered.item() == local.item()


def test_shape_errors_are_clear():
    z_bar, z, reps = batch(seed=10)
    objective = MVMRObjective()
    with pytest.raises(ValueError, match="z_bar and z"):
        objective(z_bar[:, :8], z, {}, {})
    with pytest.raises(ValueError, match="representation 'hog'"):
        objective(z_bar, z, {"hog": reps["hog"][:5]}, {"hog": 1.0})
    with pytest.raises(ValueError, match="no weight for \\['pixels'\\]"):
        objective(z_bar, z, reps, {"hog": 1.0})


def test_standardize_columns_matches_numpy_and_zeroes_constant_features():
    from mvmr.losses.objective import standardize_columns

    g = torch.Generator().manual_seed(3)
    rep = torch.randn(10, 2, 3, generator=g, dtype=torch.float64) * torch.tensor([1e-3, 1.0, 50.0]).double()
    rep[:, 1, 2] = 7.0  # constant over the batch
    flat = rep.reshape(10, -1).numpy()
    std = flat.std(axis=0)
    expected = np.where(std > 0, (flat - flat.mean(0)) / np.maximum(std, 1e-6), 0.0)
    np.testing.assert_allclose(standardize_columns(rep).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_standardized_representation_uses_z_scored_features_in_dcor():
    z_bar, z, reps = batch(seed=4)
    reps["hog"] = reps["hog"] * torch.tensor([100.0, 1.0, 1.0, 1.0, 0.01]).double()  # one feature dominates
    weights = {"hog": 2.0, "pixels": 1.0}
    loss, terms = MVMRObjective(standardized=["hog"])(z_bar, z, reps, weights)
    flat = reps["hog"].numpy()
    z_scored = torch.from_numpy((flat - flat.mean(0)) / flat.std(0))
    expected = numpy_terms(z_bar, z, {"hog": z_scored, "pixels": reps["pixels"]})
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-9, abs=1e-12), key
    _, plain = MVMRObjective()(z_bar, z, reps, weights)
    assert abs(plain["dcor/hog"].item() - terms["dcor/hog"].item()) > 1e-3  # the option changes the term
    torch.testing.assert_close(plain["dcor/pixels"], terms["dcor/pixels"])  # and only the named one


def test_signed_power_matches_numpy_keeps_signs_and_zeros():
    from mvmr.losses.objective import signed_power

    rep = torch.tensor([[-8.0, -1e-3, 0.0, 1e-3, 16.0]], dtype=torch.float64)
    expected = np.sign(rep.numpy()) * np.abs(rep.numpy()) ** 0.25
    np.testing.assert_allclose(signed_power(rep, 0.25).numpy(), expected, rtol=1e-12, atol=0)
    assert signed_power(rep, 1.0) is rep


def test_power_then_standardize_in_dcor_matches_numpy():
    """power: sign(φ)|φ|^p first, then the z-scoring, then the dCor; only the named term changes."""
    z_bar, z, reps = batch(seed=5)
    weights = {"hog": 2.0, "pixels": 1.0}
    loss, terms = MVMRObjective(standardized=["hog"], powers={"hog": 0.5, "pixels": 1.0})(z_bar, z, reps, weights)
    flat = reps["hog"].numpy()
    powered = np.sign(flat) * np.sqrt(np.abs(flat))
    z_scored = torch.from_numpy((powered - powered.mean(0)) / powered.std(0))
    expected = numpy_terms(z_bar, z, {"hog": z_scored, "pixels": reps["pixels"]})
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-9, abs=1e-12), key
    _, plain = MVMRObjective(standardized=["hog"])(z_bar, z, reps, weights)
    assert abs(plain["dcor/hog"].item() - terms["dcor/hog"].item()) > 1e-4
    torch.testing.assert_close(plain["dcor/pixels"], terms["dcor/pixels"])
    with pytest.raises(ValueError, match="powers must be > 0"):
        MVMRObjective(powers={"hog": 0.0})


def test_weights_given_to_the_constructor_are_the_ones_used():
    torch.manual_seed(0)
    z_bar, z = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    reps = {"a": torch.randn(8, 3, dtype=torch.float64), "b": torch.randn(8, 7, dtype=torch.float64)}
    weights = {"a": 2.0, "b": -0.5}
    built = MVMRObjective(representation_weights=weights)
    loss, terms = built(z_bar, z, reps)
    explicit, _ = MVMRObjective()(z_bar, z, reps, weights)
    assert loss.item() == pytest.approx(explicit.item(), rel=1e-12)
    assert loss.item() == pytest.approx(
        (terms["mse"] + terms["std"] + terms["dcor_zz"] + 2.0 * terms["dcor/a"] - 0.5 * terms["dcor/b"]).item(),
        rel=1e-12,
    )
    with pytest.raises(ValueError, match="no weight for"):
        MVMRObjective()(z_bar, z, reps)
