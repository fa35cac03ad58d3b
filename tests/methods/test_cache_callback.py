"""The representation-cache callback: which device builds, and which processes build in which turn under DDP.

Lightning calls a callback's setup before the strategy moves the module to the GPU, so the module's own device
is still the CPU there; the callback must build on the strategy's root device. Under DDP rank 0 builds first,
then the first process of each other node, then the rest (which reuse the files).
"""

from types import SimpleNamespace

import pytest
import torch
from test_wiring import tiny_module

import mvmr.methods.callbacks as callbacks
from mvmr.methods.callbacks import RepresentationCacheCallback


def fake_trainer(global_rank: int, local_rank: int, world_size: int, device: torch.device):
    return SimpleNamespace(
        world_size=world_size,
        global_rank=global_rank,
        local_rank=local_rank,
        is_global_zero=global_rank == 0,
        strategy=SimpleNamespace(root_device=device),
    )


@pytest.fixture
def recorded(monkeypatch):
    events = []
    state = {"rank": None}

    def build(**kwargs):
        events.append(("build", state["rank"], kwargs["device"]))
        return f"cache built by {state['rank']}"

    monkeypatch.setattr(callbacks.RepresentationCache, "build", staticmethod(build))
    monkeypatch.setattr(callbacks.RepresentationCache, "check_fits", staticmethod(lambda **kwargs: None))
    monkeypatch.setattr(callbacks, "wait_for_every_process", lambda: events.append(("wait", state["rank"], None)))
    return events, state


def run_setup(rank, local_rank, world, device, state):
    module = tiny_module()
    datamodule = SimpleNamespace(pretrain_dataloader=lambda **kwargs: [], num_pretrain_samples=10)
    callback = RepresentationCacheCallback(module.cfg, datamodule, root=None)
    state["rank"] = rank
    callback.setup(fake_trainer(rank, local_rank, world, device), module, "fit")
    return module


def test_builds_on_the_strategys_device_not_the_modules(recorded):
    events, state = recorded
    device = torch.device("meta")  # stands for cuda:0: anything but the module's CPU
    module = run_setup(0, 0, 1, device, state)
    assert [e for e in events if e[0] == "build"] == [("build", 0, device)]
    assert module.device == torch.device("cpu")  # the callback did not rely on it
    assert module.representation_cache == "cache built by 0"


def test_ddp_turns_rank_zero_then_each_nodes_first_process_then_the_rest(recorded):
    """Two nodes of two processes: which turn (before the first wait, between the waits, after) each builds in."""
    events, state = recorded
    waits_before_build = {}
    for rank, local_rank in ((0, 0), (1, 1), (2, 0), (3, 1)):
        events.clear()
        run_setup(rank, local_rank, 4, torch.device("cpu"), state)
        kinds = [kind for kind, _, _ in events]
        assert kinds.count("wait") == 2 and kinds.count("build") == 1, kinds  # every rank enters both barriers
        waits_before_build[rank] = kinds[: kinds.index("build")].count("wait")
    assert waits_before_build == {0: 0, 2: 1, 1: 2, 3: 2}  # rank 0; node 2's first process; the others


def test_a_single_process_waits_for_nobody(monkeypatch):
    import mvmr.parallel as parallel

    monkeypatch.setattr(parallel.dist, "barrier", lambda **kwargs: pytest.fail("a barrier with one process"))
    parallel.wait_for_every_process()
