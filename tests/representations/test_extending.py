"""The README's "Extending" section, followed as a newcomer would: its representation example, saved as a module,
is accepted by the config, built with its parameters, computes what it says, and trains one step."""

import importlib.util
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT

from mvmr.config import load_config
from mvmr.data import DatasetInfo
from mvmr.errors import ConfigError
from mvmr.representations import build_representation
from mvmr.representations.registry import REPRESENTATIONS


def readme_example() -> str:
    """The first Python block of the README's Extending section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Extending") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def block_mean(tmp_path):
    """The README's file written and imported as its own module (as the package would import it)."""
    path = tmp_path / "block_mean.py"
    path.write_text(readme_example())
    spec = importlib.util.spec_from_file_location("readme_block_mean", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module.BlockMean
    del REPRESENTATIONS._items["block_mean"]


def test_the_readme_representation_computes_what_it_says(block_mean):
    rep = build_representation("block_mean", {"block": 2}, in_channels=3, image_size=8)
    x = torch.rand(5, 3, 8, 8)
    expected = x.double().reshape(5, 3, 4, 2, 4, 2).mean(dim=(3, 5)).flatten(1)  # the definition, in float64
    out = rep(x)
    assert out.shape == (5, rep.output_dim()) == (5, 48)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ConfigError, match="block_mean.block must be an int >= 1"):
        build_representation("block_mean", {"block": 0}, in_channels=3, image_size=8)


def test_the_readme_representation_is_a_config_entry_and_trains(block_mean):
    from mvmr.methods.pretrain import MVMRPretrainModule

    overrides = [
        "encoder.width=8",
        "encoder.out_dim=16-16",
        "dataset.size=16",
        "probe.enabled=false",
        "compile_view_ops=false",
        "representations=[{name: block_mean, weight: 1.0, params: {block: 2}}]",
    ]
    cfg = load_config(ROOT / "configs" / "digits_self_supervised.yaml", overrides)
    module = MVMRPretrainModule(cfg, DatasetInfo(10, 3, (0.5,) * 3, (0.25,) * 3)).train()
    logged = {}
    module.log_dict = lambda values, **kwargs: logged.update(values)
    module.log = lambda *args, **kwargs: None
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    loss = module.training_step((images, torch.full((8,), -1), torch.arange(8)), 0)
    assert torch.isfinite(loss)
    assert "train/dcor/block_mean" in logged
    x_bar = module.eval_view(images)
    torch.testing.assert_close(
        next(iter(module.representations.values()))(x_bar), F.avg_pool2d(x_bar, 2).flatten(1), rtol=1e-5, atol=1e-6
    )
