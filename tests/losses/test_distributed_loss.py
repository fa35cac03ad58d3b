"""Global-batch loss under DDP (2 CPU processes, gloo) equals one process on the full batch."""

import pytest
import torch
import torch.distributed as dist
from gloo import init_gloo, run_gloo, save_rank_results
from torch.nn.parallel import DistributedDataParallel

from mvmr.losses import MVMRObjective, gather_with_grad

WORLD = 2
LOCAL_BATCH = 8
IN_DIM, OUT_DIM = 12, 6
WEIGHTS = {"hog": 0.5, "pixels": -0.3}


def full_batch():
    """Inputs x̄, x' (2B, IN_DIM) and representations φ_k (2B, d_k), fixed by a seed."""
    g = torch.Generator().manual_seed(0)
    n = WORLD * LOCAL_BATCH
    x_bar = torch.randn(n, IN_DIM, generator=g, dtype=torch.float64)
    x_aug = x_bar + 0.5 * torch.randn(n, IN_DIM, generator=g, dtype=torch.float64)
    reps = {
        "hog": torch.tanh(x_bar[:, :4]) + 0.1 * torch.randn(n, 4, generator=g, dtype=torch.float64),
        "pixels": torch.randn(n, 3, 2, 2, generator=g, dtype=torch.float64),
    }
    return x_bar, x_aug, reps


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Linear(IN_DIM, OUT_DIM).double()


def loss_and_grads(model, wrapped, x_bar, x_aug, reps, gather: bool):
    """MV-MR loss of z̄ = m(x̄), z = m(x') (two forward calls, as in training), then the parameter grads."""
    objective = MVMRObjective(std_margin=2.0, gather=gather, standardized=("pixels",))  # z-scored on the global batch
    loss, _ = objective(wrapped(x_bar), wrapped(x_aug), reps, WEIGHTS)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    init_gloo(rank, port, WORLD, timeout_s=60)
    try:
        x_bar, x_aug, reps = full_batch()
        mine = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        results = {}
        for gather in (True, False):
            model = tiny_model()
            ddp = DistributedDataParallel(model)
            results[gather] = loss_and_grads(
                model, ddp, x_bar[mine], x_aug[mine], {k: v[mine] for k, v in reps.items()}, gather
            )
        # unequal local batches (3 and 5 rows): rank order kept, gradient = world · ∂L/∂(own rows)
        local = torch.full((3 + 2 * rank, 2), float(rank), dtype=torch.float64, requires_grad=True)
        gathered = gather_with_grad(local)
        coefficients = torch.arange(gathered.numel(), dtype=torch.float64).reshape(gathered.shape)
        (gathered * coefficients).sum().backward()
        results["uneven"] = (gathered.detach(), local.grad.clone(), coefficients)
        save_rank_results(out_dir, rank, results)
    finally:
        dist.destroy_process_group()


def test_ddp_global_batch_matches_single_process(tmp_path):
    ranks = run_gloo(_worker, WORLD, tmp_path)

    model = tiny_model()
    x_bar, x_aug, reps = full_batch()
    ref_loss, ref_grads = loss_and_grads(model, model, x_bar, x_aug, reps, gather=True)

    for result in ranks:
        loss, grads = result[True]
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5, abs=1e-8)
        for grad, ref in zip(grads, ref_grads):
            torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-8)

    # the local-batch loss is a different objective: the test can tell them apart
    local_loss, local_grads = ranks[0][False]
    assert abs(local_loss.item() - ref_loss.item()) > 1e-3
    assert max((g - r).abs().max().item() for g, r in zip(local_grads, ref_grads)) > 1e-3

    for rank, result in enumerate(ranks):
        gathered, grad, coefficients = result["uneven"]
        expected = torch.cat([torch.zeros(3, 2), torch.ones(5, 2)]).double()
        torch.testing.assert_close(gathered, expected)
        rows = slice(0, 3) if rank == 0 else slice(3, 8)
        torch.testing.assert_close(grad, WORLD * coefficients[rows])
