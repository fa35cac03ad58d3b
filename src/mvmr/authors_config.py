"""The authors' config files (vkinakh/mv-mr ``configs/*.yaml``) read as the runs they describe.

Their files leave out what their modules fix in code: the representations and their sign, the probe, the
schedule's details, the normalisation. A file in their format is recognised by a missing ``representations``
list (pretraining) or by their ``num_features`` key (fine-tuning); :func:`fill_authors_defaults` then completes
the raw mapping, for every key the file (and ``--set``) leaves out, with what their code does, each cited below.
The seed-named configs of this project spell the same values out (``tests/config/test_seed_configs.py`` pins both).
What this project still does differently, on purpose, is listed in ``docs/authors.md`` with the switch that
restores their behaviour.
"""

from __future__ import annotations

import copy
from typing import Any

from mvmr import messages

PROTOCOLS = ("self_supervised", "distillation", "semi_supervised", "voc")

IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CIFAR_STATS = ([0.491, 0.482, 0.447], [0.247, 0.243, 0.261])
# src/transform/transform.py DATASET_STATS: the normalisation of each dataset in their code
AUTHORS_STATS = {
    "stl10": IMAGENET_STATS,
    "imagenet": IMAGENET_STATS,
    "cifar10": CIFAR_STATS,
    "cifar20": CIFAR_STATS,
    "cifar100": CIFAR_STATS,
}

# src/model/self_supervised_module.py, ``step``: `loss += self._loss_dc(feat, z)` for these five, in this order
# ('full_img', 'full_img_scatnet', 'full_img_augment', 'full_img_hog', 'full_img_std'): +dCor, i.e. weight -1
# on 1 - dCor. The copy of 'full_img_augment' uses their 'custom' transform whatever the file's aug_policy.
AUTHORS_REPRESENTATIONS = (
    {"name": "pixels", "weight": -1.0},
    {"name": "scatnet", "weight": -1.0},
    {"name": "augmented_pixels", "weight": -1.0, "params": {"policy": "authors"}},
    {"name": "hog", "weight": -1.0},
    {"name": "local_std", "weight": -1.0},
)

# src/transform/transform.py AugTransform: their policy names -> this project's policies that reproduce them
# ('custom' there is the `authors` policy here; this project's own `custom` is a different, milder transform)
AUTHORS_POLICY_NAMES = {"custom": "authors", "cifar20": "cifar20", "cifar": "cifar"}

# What their pretraining modules fix in code (both SelfSupervisedModule and CLIPSelfSupervisedModule):
PRETRAIN_DEFAULTS = {
    "encoder.maxpool": True,  # src/model/resnet.py: the 3x3 stem replaces conv1 only
    "encoder.projector_last_bias": False,  # src/model/resnet.py: every projector Linear has bias=False
    "probe.source": "labelled",  # OnlineFineTuner: next(infinite loader of the labelled train split)
    "probe.lr": 1e-4,  # OnlineFineTuner: torch.optim.Adam(..., lr=1e-4)
    "probe.scheduled": False,  # ... its own optimiser, no schedule
    "wd_norm_and_bias": True,  # configure_optimizers: Adam(self._encoder.parameters(), weight_decay=wd)
    "schedule_epoch": "single_device",  # warmup/total steps = epochs * len(self.train_dataloader())
    "loss.gather": False,  # the loss sees each GPU's own batch (no all-gather)
    "trainer.devices": "auto",  # main_*.py: pl.Trainer(gpus=-1, strategy='ddp')
}
PROTOCOL_DEFAULTS = {
    "self_supervised": {"min_lr": 1e-6},  # self_supervised_module.py: CosineAnnealingWarmupRestarts(min_lr=1e-6)
    "distillation": {"scheduler": "authors_clip"},  # clip_self_supervised_module.py: its own schedule, see optim.py
    "semi_supervised": {
        "scheduler": "authors_epoch_cosine",  # semi_supervised_module.py: CosineAnnealingLR(T_max=len(dl)) per epoch
        "schedule_epoch": "single_device",
        "warmup_epochs": 0,
        "wd_norm_and_bias": True,  # Adam(encoder + classifier parameters, weight_decay=wd)
        "dataset.aug_policy": "authors",  # AugTransform(name, size): policy 'custom'
        "trainer.devices": "auto",
        "encoder.maxpool": True,  # their `encoder:` section builds a ResnetMultiProj (resnet.py)
        "encoder.projector_last_bias": False,
    },
    "voc": {
        "encoder.maxpool": True,
        "encoder.projector_last_bias": False,
        "warmup_epochs": 0,  # voc_linear_eval_module.py: Adam, no schedule
        "dataset.size": 224,
    },  # features at the pretraining size (theirs: 300-px images, docs/authors.md)
}


def is_authors_format(data: dict, protocol: str) -> bool:
    """Whether a raw config mapping is in the authors' format (see the module docstring)."""
    if protocol in ("self_supervised", "distillation"):
        return "representations" not in data
    if protocol == "semi_supervised":
        return "num_features" in data
    if protocol == "voc":
        return "encoder" in data
    return False


def _get(data: dict, dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _has(data: dict, dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node or node[part] is None:
            return False
        node = node[part]
    return True


def _set(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def authors_representations(data: dict, protocol: str) -> list[dict]:
    """Their representation terms: the five hand-crafted ones with their sign (self-supervised), or the CLIP
    image tower from the ``clip:`` section, maximised (distillation: ``1 - dCor(z, clip)``)."""
    if protocol == "distillation":
        return [{"name": "teacher", "weight": 1.0, "params": {"kind": "open_clip"}}]
    return [dict(term) for term in AUTHORS_REPRESENTATIONS]


def fill_authors_defaults(data: dict, protocol: str, source: str = "the config") -> dict:
    """Complete an authors'-format mapping (in place, and returned) with what their code fixes, for every key
    it leaves out; one line on stderr says so. Mappings in this project's format are returned unchanged."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not is_authors_format(data, protocol):
        return data
    filled = dict(PRETRAIN_DEFAULTS) if protocol in ("self_supervised", "distillation") else {}
    filled.update(PROTOCOL_DEFAULTS[protocol])
    name = _get(data, "dataset.name")
    if name in AUTHORS_STATS:
        filled["dataset.mean"], filled["dataset.std"] = AUTHORS_STATS[name]
    if protocol in ("self_supervised", "distillation"):
        filled["representations"] = authors_representations(data, protocol)
    if protocol == "semi_supervised" and _has(data, "lr"):
        filled["lr_head"] = data["lr"]  # one Adam, one rate for the encoder and the classifier
    renamed = []
    policy = _get(data, "dataset.aug_policy")
    if policy in AUTHORS_POLICY_NAMES and AUTHORS_POLICY_NAMES[policy] != policy:  # their names for their transforms
        data["dataset"]["aug_policy"] = AUTHORS_POLICY_NAMES[policy]
        renamed.append(f"dataset.aug_policy {policy} -> {AUTHORS_POLICY_NAMES[policy]}")
    applied = [key for key in filled if not _has(data, key) and key != "representations"]
    if "representations" in filled and "representations" not in data:
        data["representations"] = copy.deepcopy(filled.pop("representations"))
    for key in applied:
        _set(data, key, filled[key])
    if applied or protocol in ("self_supervised", "distillation"):
        what = {
            "self_supervised": "their five representations with their sign (weight -1)",
            "distillation": "the CLIP teacher from 'clip:' and their CLIP schedule",
            "semi_supervised": "their fine-tuning schedule and augmentation",
            "voc": "their encoder section",
        }
        messages.warn(
            f"note: {source} is in the authors' format (vkinakh/mv-mr): added {what[protocol]} and what "
            f"their code fixes ({', '.join(applied)})" + "".join(f"; {r}" for r in renamed) + "; see docs/authors.md"
        )
    return data
