"""The moving average of the backbone (ema_decay): the update against a float64 recursion, checkpoint keys and
which weights evaluation loads."""

import pytest
import torch
from conftest import tiny_args
from torch import nn

from mvmr.checkpoint import backbone_prefix
from mvmr.errors import CheckpointError
from mvmr.models.ema import ema_decay_at, make_ema_copy, update_ema


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def test_update_ema_is_the_lerp_of_parameters_and_float_buffers_and_copies_counters():
    online = small_net()
    ema = make_ema_copy(online)
    assert not any(p.requires_grad for p in ema.parameters())
    before = {k: v.clone().double() for k, v in ema.state_dict().items()}
    online.train()(torch.randn(5, 3, 8, 8))  # moves BatchNorm's running statistics and its counter
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    update_ema(ema, online, 0.9)
    after_online = online.state_dict()
    for key, value in ema.state_dict().items():
        if value.is_floating_point():
            expected = 0.9 * before[key] + 0.1 * after_online[key].double()
            torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-6), key
            assert not torch.equal(value, after_online[key]), key
        else:  # num_batches_tracked
            assert torch.equal(value, after_online[key]), key


def test_update_ema_rejects_a_different_structure():
    with pytest.raises(ValueError, match="differ in structure"):
        update_ema(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 0.9)


def test_decay_warms_up_then_stays_at_the_configured_value():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999) == pytest.approx(0.91)
    assert ema_decay_at(10**6, 0.999) == 0.999


def test_backbone_prefix_auto_online_and_ema():
    plain = {"backbone.w": 0, "projector.w": 0}
    with_ema = {**plain, "ema_backbone.w": 0}
    assert backbone_prefix(plain, "auto", "x") == "backbone."
    assert backbone_prefix(with_ema, "auto", "x") == "ema_backbone."
    assert backbone_prefix(with_ema, "online", "x") == "backbone."
    with pytest.raises(CheckpointError, match="no moving-average weights.*eval.weights=online"):
        backbone_prefix(plain, "ema", "x.ckpt")


def test_trained_ema_follows_the_recursion_and_evaluation_loads_it(tmp_path, monkeypatch, capsys):
    """Every optimiser step updates the average with the warmed-up decay; the checkpoint's ema_backbone.* equals
    the float64 recursion over the online weights seen after each step; evaluation loads ema by default."""
    import mvmr.methods.pretrain as pretrain_module
    from mvmr.api import load_frozen_backbone
    from mvmr.cli.evaluate import evaluate
    from mvmr.cli.pretrain import pretrain

    seen = {"decays": [], "online": []}
    real_update = pretrain_module.update_ema

    def recording_update(ema, online, decay):
        as64 = lambda state: {k: (v.double() if v.is_floating_point() else v).clone() for k, v in state.items()}
        if not seen["online"]:
            seen["start"] = as64(ema.state_dict())
        seen["decays"].append(decay)
        seen["online"].append(as64(online.state_dict()))
        real_update(ema, online, decay)

    monkeypatch.setattr(pretrain_module, "update_ema", recording_update)
    args = tiny_args(tmp_path, "ema", ["ema_decay=0.5"])
    run = pretrain(args)
    steps = torch.load(run.last, weights_only=False)["global_step"]
    assert len(seen["decays"]) == steps > 1
    assert seen["decays"] == [ema_decay_at(i, 0.5) for i in range(steps)]
    expected = seen["start"]
    for decay, online in zip(seen["decays"], seen["online"]):
        expected = {
            k: (decay * v + (1 - decay) * online[k]) if v.is_floating_point() else online[k]
            for k, v in expected.items()
        }
    state = torch.load(run.last, weights_only=False)["state_dict"]
    for key, value in expected.items():
        torch.testing.assert_close(state[f"ema_backbone.{key}"].to(value.dtype), value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(state["ema_backbone.conv1.weight"], state["backbone.conv1.weight"])

    ema = load_frozen_backbone(run.last)
    online = load_frozen_backbone(run.last, weights="online")
    assert (ema.weights, online.weights) == ("ema", "online")
    assert torch.equal(ema.backbone.conv1.weight, state["ema_backbone.conv1.weight"])
    assert torch.equal(online.backbone.conv1.weight, state["backbone.conv1.weight"])
    from mvmr import load_encoder

    assert torch.equal(load_encoder(run.last, weights="online")[0].conv1.weight, state["backbone.conv1.weight"])
    evaluate(args + ["--ckpt", str(run.last), "--no_progress"])
    assert "backbone weights: ema" in capsys.readouterr().out


def test_ema_starts_from_the_fine_tune_from_weights(pretrained_run, tmp_path, monkeypatch):
    """fine_tune_from loads the backbone after the module (and its EMA copy) is built; the average must start
    from the loaded weights, not from the random initialisation."""
    import mvmr.methods.pretrain as pretrain_module
    from mvmr.cli.pretrain import pretrain

    source, _ = pretrained_run
    loaded = torch.load(source.last, weights_only=False)["state_dict"]["backbone.conv1.weight"]
    starts, real_update = [], pretrain_module.update_ema

    def recording_update(ema, online, decay):
        if not starts:
            starts.append(ema.conv1.weight.detach().clone())
        real_update(ema, online, decay)

    monkeypatch.setattr(pretrain_module, "update_ema", recording_update)
    pretrain(tiny_args(tmp_path, "ema_ft", ["ema_decay=0.5", f"fine_tune_from={source.last}", "epochs=1"]))
    torch.testing.assert_close(starts[0], loaded)


def test_ema_updates_once_per_optimiser_step_with_gradient_accumulation(tmp_path, monkeypatch):
    import mvmr.methods.pretrain as pretrain_module
    from mvmr.cli.pretrain import pretrain

    decays, real_update = [], pretrain_module.update_ema
    monkeypatch.setattr(pretrain_module, "update_ema", lambda e, o, d: (decays.append(d), real_update(e, o, d)))
    run = pretrain(tiny_args(tmp_path, "ema_acc", ["ema_decay=0.5", "accumulate_grad_batches=2", "epochs=1"]))
    steps = torch.load(run.last, weights_only=False)["global_step"]
    assert steps >= 1 and decays == [ema_decay_at(i, 0.5) for i in range(steps)]


def test_resuming_with_a_changed_ema_decay_continues_instead_of_failing(tmp_path, capsys):
    """A run resumed with ema_decay switched on starts the average from the resumed weights; switched off, the
    checkpoint's average is dropped. Neither fails on the state dict's keys."""
    from mvmr.cli.pretrain import pretrain

    run = pretrain(tiny_args(tmp_path, "switch"))
    resumed_backbone = torch.load(run.last, weights_only=False)["state_dict"]["backbone.conv1.weight"]
    pretrain(tiny_args(tmp_path, "switch", ["ema_decay=0.5", "epochs=3"]))
    out = capsys.readouterr().out
    assert "Resuming from" in out and "starts from the resumed weights" in out
    state = torch.load(run.last, weights_only=False)["state_dict"]
    assert "ema_backbone.conv1.weight" in state
    assert not torch.equal(state["ema_backbone.conv1.weight"], resumed_backbone)  # it moved after the resume
    pretrain(tiny_args(tmp_path, "switch", ["epochs=4"]))
    assert "average is not kept" in capsys.readouterr().out
    assert not any(k.startswith("ema_backbone.") for k in torch.load(run.last, weights_only=False)["state_dict"])
