"""Nothing lost: deterministic resume, non-finite loss, interrupted runs; and a 2-process DDP run on the CPU."""

import signal
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, tiny_args
from entry_callbacks import Crash

DETERMINISTIC = ["deterministic=true", "epochs=3", "cache.enabled=false", "fp16=false"]


class InterruptAfterValidation(pl.Callback):
    """Simulates Ctrl-C right after the checkpoint of epoch ``epoch`` was written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_validation_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def backbone_state(path):
    state = torch.load(path, weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(("backbone.", "projector.", "probe."))}


def bf16_cpu() -> bool:
    from mvmr.hardware import cpu_supports_bf16

    return cpu_supports_bf16()


@pytest.mark.parametrize(
    "precision",
    [
        [],
        pytest.param(
            ["fp16=true", "dataset.size=32"],
            id="bf16-32px",  # 32 px: no 1x1 map at a strided conv
            marks=pytest.mark.skipif(not bf16_cpu(), reason="this CPU has no bf16"),
        ),
    ],
)
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch, capsys, precision):
    import mvmr.cli.pretrain as cli
    import mvmr.protocols.pretrain as protocol

    settings = DETERMINISTIC + precision
    straight = cli.pretrain(tiny_args(tmp_path, "straight", settings))

    original = protocol.extra_callbacks
    monkeypatch.setattr(protocol, "extra_callbacks", lambda *a: original(*a) + [InterruptAfterValidation(epoch=1)])
    sigint = signal.getsignal(signal.SIGINT)
    with pytest.raises((SystemExit, KeyboardInterrupt)):
        cli.pretrain(tiny_args(tmp_path, "interrupted", settings))
    signal.signal(signal.SIGINT, sigint)  # Lightning ignores further Ctrl-C while shutting down
    assert "interrupted at epoch 1" in capsys.readouterr().err
    monkeypatch.setattr(protocol, "extra_callbacks", original)

    resumed = cli.pretrain(tiny_args(tmp_path, "interrupted", settings))
    assert "Resuming from" in capsys.readouterr().out
    a, b = backbone_state(straight.last), backbone_state(resumed.last)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    "crash, every, saved_step",
    [
        (Crash(before_step=5), 2, 4),  # last written after the 1st of epoch 1's 3 batches
        (Crash(end_of_epoch=0), 3, 3),  # last written by the periodic save on epoch 0's final batch
    ],
)
def test_periodic_checkpoint_resumes_mid_epoch_with_the_same_result(
    tmp_path, monkeypatch, capsys, crash, every, saved_step
):
    import mvmr.cli.pretrain as cli
    import mvmr.protocols.pretrain as protocol

    settings = DETERMINISTIC + [f"trainer.checkpoint_every_n_steps={every}"]
    straight = cli.pretrain(tiny_args(tmp_path, "straight", settings))

    original = protocol.extra_callbacks
    monkeypatch.setattr(protocol, "extra_callbacks", lambda *a: original(*a) + [crash])
    with pytest.raises(RuntimeError, match="simulated kill -9"):
        cli.pretrain(tiny_args(tmp_path, "killed", settings))
    monkeypatch.setattr(protocol, "extra_callbacks", original)
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == saved_step

    resumed = cli.pretrain(tiny_args(tmp_path, "killed", settings))
    assert "Resuming from" in capsys.readouterr().out
    a, b = backbone_state(straight.last), backbone_state(resumed.last)
    assert torch.load(resumed.last, weights_only=False)["global_step"] == 9
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_non_finite_loss_names_the_term_and_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from mvmr.cli.pretrain import pretrain
    from mvmr.methods.pretrain import NonFiniteLossError
    from mvmr.representations.pixels import Pixels

    calls = {"n": 0}
    forward = Pixels.forward

    def poisoned(self, x):
        calls["n"] += 1
        out = forward(self, x)
        return torch.full_like(out, float("nan")) if calls["n"] > 3 else out  # the 4th step (epoch 1) goes wrong

    monkeypatch.setattr(Pixels, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss term 'dcor/pixels' became nan at step 3 \(epoch 1\)"):
        pretrain(tiny_args(tmp_path, "nan", ["cache.enabled=false"]))
    last = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


RECORDING_ENTRY = """
import sys
sys.path.insert(0, {tests!r})
import mvmr.cli.pretrain as cli
import mvmr.protocols.pretrain as protocol
from entry_callbacks import RecordGenerator

original = protocol.extra_callbacks
protocol.extra_callbacks = lambda *a: original(*a) + [RecordGenerator({out!r})]
if __name__ == "__main__":
    sys.exit(cli.main())
"""


def test_two_process_ddp_run_on_the_cpu_completes_with_its_own_views_per_rank(tmp_path):
    """The run completes; the ranks' generators differ when training starts (with seed_everything alone every
    rank would draw the same view parameters for its sample j); the checkpoint holds both ranks' states."""
    entry = tmp_path / "recording_entry.py"
    entry.write_text(RECORDING_ENTRY.format(tests=str(ROOT / "tests"), out=str(tmp_path)))
    args = tiny_args(
        tmp_path,
        "ddp",
        ["trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp", "epochs=1", "n_workers=0"],
    )
    proc = subprocess.run([sys.executable, str(entry), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "online probe (test)" in proc.stdout
    assert (
        proc.stdout.count("DDP loss traffic: loss collectives per rank and step (2 ranks x 32)") == 1
    )  # rank 0 says it
    rank0, rank1 = (torch.load(tmp_path / f"rng_rank{r}.pt") for r in (0, 1))
    assert not torch.equal(rank0, rank1)
    from mvmr.methods.resilience import RNG_KEY, RNG_PER_RANK_KEY

    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    per_rank = ckpt[RNG_PER_RANK_KEY]
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])
    assert torch.equal(ckpt[RNG_KEY]["torch"], per_rank[0]["torch"])


def _fake_trainer(world_size: int, rank: int):
    from types import SimpleNamespace

    return SimpleNamespace(world_size=world_size, global_rank=rank)


def test_each_rank_gets_its_own_generator_state_back_on_resume(capsys):
    from mvmr.methods.resilience import RNG_KEY, RNG_PER_RANK_KEY, RNGStateCallback, rng_state

    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(rng_state())
    checkpoint = {RNG_KEY: states[0], RNG_PER_RANK_KEY: states}
    callback = RNGStateCallback(seed=0)
    for rank in (0, 1):
        torch.manual_seed(99)
        callback.on_load_checkpoint(_fake_trainer(2, rank), None, checkpoint)
        assert torch.equal(torch.get_rng_state(), states[rank]["torch"])
    # a different number of processes: rank 0 continues rank 0's stream and says so; other ranks keep theirs
    torch.manual_seed(99)
    callback.on_load_checkpoint(_fake_trainer(4, 0), None, checkpoint)
    assert torch.equal(torch.get_rng_state(), states[0]["torch"])
    assert "ranks > 0 continue with fresh per-rank seeds" in capsys.readouterr().out
    torch.manual_seed(99)
    kept = torch.get_rng_state()
    callback.on_load_checkpoint(_fake_trainer(4, 3), None, checkpoint)
    assert torch.equal(torch.get_rng_state(), kept)


def test_ranks_above_zero_reseed_at_setup_and_rank_zero_keeps_its_stream():
    from mvmr.methods.resilience import RNGStateCallback, rank_seed

    assert len({rank_seed(0, r) for r in range(8)} | {rank_seed(1, r) for r in range(8)}) == 16
    assert rank_seed(3, 1) == rank_seed(3, 1)
    callback = RNGStateCallback(seed=3)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    callback.setup(_fake_trainer(2, 0), None, "fit")
    assert torch.equal(torch.get_rng_state(), before)
    callback.setup(_fake_trainer(1, 0), None, "fit")
    assert torch.equal(torch.get_rng_state(), before)
    callback.setup(_fake_trainer(2, 1), None, "fit")
    torch_rank1 = torch.get_rng_state()
    torch.manual_seed(rank_seed(3, 1))
    assert torch.equal(torch_rank1, torch.get_rng_state()) and not torch.equal(torch_rank1, before)


CRASHING_ENTRY = """
import sys
sys.path.insert(0, {tests!r})
import mvmr.cli.pretrain as cli
from entry_callbacks import Crash

import mvmr.protocols.pretrain as protocol
original = protocol.extra_callbacks
protocol.extra_callbacks = lambda *a: original(*a) + [Crash(before_step={step})]
if __name__ == "__main__":
    sys.exit(cli.main())
"""


def test_two_process_ddp_run_resumes_mid_epoch_with_the_same_result(tmp_path):
    """DDP, 2 processes: a run killed inside epoch 1 (no handler runs; last.ckpt is written every step) and
    re-run with the same command ends with exactly the weights of an uninterrupted DDP run. Each rank must
    continue its own shard of the epoch's permutation (Lightning's sampler wrapper would shift the shards)."""
    settings = DETERMINISTIC + [
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.strategy=ddp",
        "n_workers=0",
        "trainer.checkpoint_every_n_steps=1",
    ]
    entry = tmp_path / "crashing_entry.py"
    entry.write_text(CRASHING_ENTRY.format(tests=str(ROOT / "tests"), step=4))

    def run(script, name):
        proc = subprocess.run(
            [sys.executable, str(script), *tiny_args(tmp_path, name, settings)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        return proc

    straight = run(ROOT / "main_self_supervised.py", "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run(entry, "killed")
    assert killed.returncode != 0 and "simulated kill -9" in killed.stderr, killed.stderr[-3000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert state["global_step"] == 4  # after the 1st of epoch 1's 3 batches
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 1
    resumed = run(ROOT / "main_self_supervised.py", "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout
    a = backbone_state(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = backbone_state(last)
    assert torch.load(last, weights_only=False)["global_step"] == 9
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


class _FakeClock:
    """Stands in for the ``time`` module in mvmr.methods.resilience: ``seconds_per_step`` per optimiser step."""

    def __init__(self, seconds_per_step: float):
        self.seconds_per_step, self.now = seconds_per_step, 0.0

    def monotonic(self) -> float:
        return self.now


class _PeriodicRun:
    """A fake trainer for :class:`PeriodicCheckpoint`: counts collectives (the strategy's object broadcast and
    ``torch.distributed.broadcast``) and records the steps at which ``last`` is written."""

    def __init__(self, world_size: int = 1, rank: int = 0, object_broadcast=None):
        from types import SimpleNamespace

        self.world_size, self.global_rank, self.global_step = world_size, rank, 0
        self.collectives, self.saved_at = 0, []
        self.object_broadcast = object_broadcast or (lambda obj, src: obj)
        self.strategy = SimpleNamespace(broadcast=self._broadcast, root_device=torch.device("cpu"))

    def _broadcast(self, obj, src=0):
        self.collectives += 1
        return self.object_broadcast(obj, src)

    def save_checkpoint(self, path):
        self.saved_at.append(self.global_step)

    def train(self, callback, clock: _FakeClock, steps: int, accumulate: int = 1) -> None:
        callback.on_train_start(self, None)
        for batch_idx in range(steps * accumulate):
            if batch_idx % accumulate == accumulate - 1:  # an optimiser step ends this micro-batch
                self.global_step += 1
                clock.now += clock.seconds_per_step
            callback.on_train_batch_end(self, None, None, None, batch_idx)


def _count_tensor_broadcasts(monkeypatch, run: _PeriodicRun) -> None:
    def broadcast(tensor, src=0, **kwargs):
        run.collectives += 1

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "broadcast", broadcast)


def _expected_saves(every_n_steps: int, every_s: float, seconds_per_step: float, steps: int) -> list[int]:
    """The steps at which one process writes ``last``: every ``every_n_steps`` steps, and at the first step whose
    clock reads ``every_s`` seconds since the last save (of either kind)."""
    saves, saved_at = [], 0.0
    for step in range(1, steps + 1):
        if step % every_n_steps == 0 or step * seconds_per_step - saved_at >= every_s:
            saves.append(step)
            saved_at = step * seconds_per_step
    return saves


@pytest.mark.parametrize("accumulate", [1, 4])
def test_periodic_time_checkpoint_under_ddp_holds_a_collective_only_every_k_steps(monkeypatch, accumulate):
    """1,000 optimiser steps of 1 s with a save every minute: rank 0's clock is read into a collective at most
    once per ``time_check_every_n_steps`` steps (it was one object broadcast per batch), and each save comes
    less than that many steps after the minute has passed."""
    import mvmr.methods.resilience as resilience

    clock = _FakeClock(seconds_per_step=1.0)
    monkeypatch.setattr(resilience, "time", clock)
    run = _PeriodicRun(world_size=2, rank=0)
    _count_tensor_broadcasts(monkeypatch, run)
    callback = resilience.PeriodicCheckpoint("last.ckpt", every_minutes=1.0)
    k = callback.time_check_every_n_steps
    run.train(callback, clock, steps=1000, accumulate=accumulate)
    assert 0 < run.collectives <= -(-1000 // k) and k > 1
    assert len(run.saved_at) >= 1000 // (60 + k - 1) and 0 not in run.saved_at
    due = 60
    for saved in run.saved_at:
        assert due <= saved < due + k and saved % k == 0
        due = saved + 60


def test_periodic_time_checkpoint_in_one_process_holds_no_collective_and_is_never_late(monkeypatch):
    import mvmr.methods.resilience as resilience

    clock = _FakeClock(seconds_per_step=0.75)  # exact in binary: the fake clock adds it up without rounding
    monkeypatch.setattr(resilience, "time", clock)
    run = _PeriodicRun(world_size=1)
    _count_tensor_broadcasts(monkeypatch, run)
    callback = resilience.PeriodicCheckpoint("last.ckpt", every_n_steps=250, every_minutes=1.0)
    run.train(callback, clock, steps=1000)
    assert run.collectives == 0
    assert run.saved_at == _expected_saves(250, 60.0, 0.75, 1000)
    assert {80, 160, 250, 330} <= set(run.saved_at)


def _periodic_worker(rank: int, port: int, out_dir: str) -> None:
    """Rank 1's clock runs 1.7x as fast as rank 0's: the saves must still follow rank 0's, on both ranks."""
    import torch.distributed as dist
    from gloo import init_gloo, save_rank_results

    import mvmr.methods.resilience as resilience

    init_gloo(rank, port, 2, timeout_s=60)
    try:
        clock = _FakeClock(seconds_per_step=1.0 if rank == 0 else 1.7)
        resilience.time = clock

        def object_broadcast(obj, src):
            box = [obj]
            dist.broadcast_object_list(box, src)
            return box[0]

        run = _PeriodicRun(world_size=2, rank=rank, object_broadcast=object_broadcast)
        callback = resilience.PeriodicCheckpoint("last.ckpt", every_n_steps=130, every_minutes=1.0)
        run.train(callback, clock, steps=300, accumulate=2)
        save_rank_results(out_dir, rank, {"saved_at": run.saved_at, "k": callback.time_check_every_n_steps})
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_write_the_timed_checkpoint_at_the_same_step_as_rank_zeros_clock_says(tmp_path):
    from gloo import run_gloo

    rank0, rank1 = run_gloo(_periodic_worker, 2, tmp_path)
    assert rank0["saved_at"] == rank1["saved_at"]
    k, due = rank0["k"], 60
    timed = [saved for saved in rank0["saved_at"] if saved % 130 != 0]
    assert {130, 260} <= set(rank0["saved_at"]) and len(timed) >= 2  # by rank 1's clock: 36 steps, not 60
    for saved in rank0["saved_at"]:
        assert saved % 130 == 0 or due <= saved < due + k
        due = saved + 60
