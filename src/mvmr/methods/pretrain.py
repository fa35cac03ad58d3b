"""MV-MR pretraining as a LightningModule (self-supervised, and distillation with a ``teacher`` term).

One training step (B images, uint8, on the device)::

    x̄ = eval_view(x)            x' = train_view(x)   (random per sample)
    z̄ = g(f(x̄))                 z = g(f(x'))
    φ_k = representation_k(x̄)   (no gradients; from the cache when there is one)
    loss, terms = objective(z̄, z, φ)   + cross-entropy of the online probe on f(x̄).detach()
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Dict, Iterator, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from mvmr import messages
from mvmr.checkpoint import load_checkpoint
from mvmr.config import PretrainConfig, build_dataclass, to_dict
from mvmr.data import DatasetInfo
from mvmr.data.views import build_eval_view, build_train_view, can_crop_in_loader, train_view_from_config
from mvmr.errors import ConfigError, MVMRError
from mvmr.losses import MVMRObjective
from mvmr.methods.optim import build_optimizer, param_groups
from mvmr.methods.topk import TopKEvaluation, topk_correct
from mvmr.models import backbone_from_config, build_projector, parse_widths, use_channels_last
from mvmr.models.ema import ema_decay_at, make_ema_copy, update_ema
from mvmr.parallel import distributed_world_size
from mvmr.representations import build_representation
from mvmr.representations.terms import TermSpec, resolve_terms


class NonFiniteLossError(MVMRError):
    """The loss became NaN or inf; the message names the term and the step."""


def build_objective(cfg: PretrainConfig, specs: list[TermSpec]) -> MVMRObjective:
    """The MV-MR objective with every weight and option of the config's ``loss:`` section and of each term."""
    loss = cfg.loss
    return MVMRObjective(
        mse_weight=loss.mse_weight,
        std_weight=loss.std_weight,
        dcor_weight=loss.dcor_weight,
        std_margin=loss.std_margin,
        unbiased=loss.unbiased,
        normalize_z=loss.normalize_z,
        gather=loss.gather,
        gather_dim=loss.gather_dim,
        sketch_seed=cfg.seed,
        statistic=loss.statistic,
        representation_weights={spec.key: spec.weight for spec in specs},
        statistics={spec.key: spec.statistic for spec in specs},
        standardized=[spec.key for spec in specs if spec.standardize],
        powers={spec.key: spec.power for spec in specs},
    )


def crops_in_loader(cfg: PretrainConfig, info: Any) -> bool:
    """Whether x' is cut by the loader (``dataset.crops_in_loader``; None: for file datasets, whose info has an
    ``eval_resize``, when the policy starts with a random resized crop)."""
    wanted, files = cfg.dataset.crops_in_loader, getattr(info, "eval_resize", None) is not None
    if wanted is None:
        return files and can_crop_in_loader(cfg.dataset.aug_policy)
    if wanted and not files:
        raise ConfigError(
            f"dataset.crops_in_loader needs image files (imagenet, image_folder), not "
            f"{cfg.dataset.name}; set dataset.crops_in_loader=false"
        )
    return wanted


def endless_batches(loader) -> Iterator:
    """The batches of ``loader`` over and over; a shuffling sampler gets a new epoch (a new order) each pass."""
    for epoch in itertools.count():
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader


class MVMRPretrainModule(TopKEvaluation, pl.LightningModule):
    """Backbone f, projector g, the representations φ_k, the MV-MR objective and an online probe."""

    def __init__(self, cfg: PretrainConfig, info: Any):
        super().__init__()
        self.cfg = cfg
        self.info = info
        self.save_hyperparameters({"config": to_dict(cfg), "info": dataclasses.asdict(info)})
        self.lr = cfg.lr  # Lightning's LR finder writes here
        channels = info.channels
        self.backbone, self.feature_dim = backbone_from_config(cfg.encoder, channels)
        use_channels_last(self.backbone, cfg.channels_last)  # inputs are made channels_last in forward
        # the moving average of the backbone (evaluated by default); a frozen eager copy, updated after each step
        self.ema_backbone = make_ema_copy(self.backbone) if cfg.ema_decay > 0 else None
        self._ema_step = 0  # global_step at the last update of the average
        if cfg.compile:  # in place: parameter names (and so checkpoints) stay those of the eager module
            self.backbone.compile()
        self.projector = build_projector(self.feature_dim, cfg.encoder.out_dim, cfg.encoder.projector_last_bias)
        size = cfg.dataset.size
        self.train_view = train_view_from_config(
            cfg, info.mean, info.std, channels, crops_in_loader=crops_in_loader(cfg, info)
        )
        self.eval_view = build_eval_view(size, info.mean, info.std, getattr(info, "eval_resize", None))
        self.register_buffer("_mean", torch.tensor(info.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(info.std).view(1, -1, 1, 1), persistent=False)

        specs = resolve_terms(cfg, info)  # which φ_k, their parameters with every default, how the loss uses them
        self.representations = nn.ModuleDict()
        self.copy_views = nn.ModuleDict()  # augmented_pixels terms whose copy has a policy of its own
        for index, spec in enumerate(specs):
            augment = self._augment_normalised
            if spec.name == "augmented_pixels" and spec.params.get("policy") not in (None, cfg.dataset.aug_policy):
                self.copy_views[spec.key] = build_train_view(
                    spec.params["policy"], size, info.mean, info.std, channels, compile_ops=cfg.compile_view_ops
                )
                augment = functools.partial(self._augment_normalised, view=self.copy_views[spec.key])
            self.representations[spec.key] = build_representation(
                spec.name, spec.params, in_channels=channels, image_size=size, augment=augment, index=index
            )
        self.objective = build_objective(cfg, specs)
        self.n_classes = cfg.dataset.n_classes or info.n_classes
        # unlabelled data (a folder of images without class folders): nothing for a probe to learn
        self.probe = nn.Linear(self.feature_dim, self.n_classes) if cfg.probe.enabled and self.n_classes else None
        self.representation_cache = None  # set by the cache callback: key -> (N, d_k) tensor-like, by index
        if self.train_view.loader_crops is not None:  # x' and each augmented copy: one crop each, from the loader
            n_copies = sum(
                rep.needs_augment and getattr(rep, "draws_from_training_view", True) and key not in self.copy_views
                for key, rep in self.representations.items()
            )
            self.train_view.loader_crops = dataclasses.replace(self.train_view.loader_crops, count=1 + n_copies)
        self._labelled_batches = None  # probe.source=labelled: an endless iterator over labelled train batches

    # ------------------------------------------------------------------ helpers
    def _augment_normalised(self, x_bar: torch.Tensor, view: nn.Module | None = None) -> torch.Tensor:
        """The training augmentation (or ``view``) applied to an already normalised view (``augmented_pixels``)."""
        return (view or self.train_view)((x_bar * self._std + self._mean).clamp(0, 1))

    def _to_memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of a normalised batch: (B, C, H, W) -> (B, feature_dim)."""
        return self.backbone(self._to_memory_format(x))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, z) = (f(x), g(f(x))) for a normalised batch."""
        h = self.forward(x)
        return h, self.projector(h)

    def _augmented_copy_keys(self) -> list[str]:
        """Representations that need an independently augmented copy of the batch each step."""
        cache = self.representation_cache or {}
        return [
            key
            for key, rep in self.representations.items()
            if rep.needs_augment
            and getattr(rep, "draws_from_training_view", True)
            and key not in self.copy_views
            and key not in cache
        ]

    def compute_representations(
        self, x_bar: torch.Tensor, index: torch.Tensor, augmented: Mapping[str, torch.Tensor] | None = None
    ) -> Dict[str, torch.Tensor]:
        """φ_k(x̄) for every k: (B, d_k) each, read from the cache when the cache holds k (in its storage dtype,
        float16 or float32: the loss upcasts chunk by chunk); ``augmented`` holds
        already augmented copies (B, C, H, W) for the representations that need one."""
        out = {}
        for key, rep in self.representations.items():
            cache = self.representation_cache
            if cache is not None and key in cache:
                out[key] = cache[key].read(index).to(x_bar.device, non_blocking=True)  # storage dtype: the loss upcasts
            elif augmented is not None and key in augmented:
                out[key] = rep.from_augmented(augmented[key])
            else:
                out[key] = rep(x_bar)
        return out

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        """With crops in the loader, tell the datamodule what to cut (before Lightning asks for the loaders); under
        DDP, say what the loss's collectives move per step (the cache callback has run: its widths are known)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and datamodule is not None and hasattr(datamodule, "train_crops"):
            datamodule.train_crops = self.train_view.loader_crops
        if stage == "fit" and self._trainer is not None and self.trainer.world_size > 1 and self.trainer.is_global_zero:
            messages.info(f"DDP loss traffic: {self.loss_traffic(self.trainer.world_size).summary()}")

    def loss_traffic(self, world_size: int):
        """What the objective's collectives move per rank and step (``mvmr.losses.traffic.LossTraffic``)."""
        cache = self.representation_cache or {}
        dims, dtypes = {}, {}
        for key, rep in self.representations.items():
            if key in cache:
                dims[key] = cache.dims[key]
                dtypes[key] = torch.float16 if self.cfg.cache.dtype == "float16" else torch.float32
            else:
                dims[key], dtypes[key] = rep.output_dim(), torch.float32
        width = parse_widths(self.cfg.encoder.out_dim)[-1]
        return self.objective.traffic(world_size, self.cfg.batch_size, width, dims, dtypes)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Training batches (images, labels, index[, crops]) go to ``device`` except the sample index, which stays
        on the CPU where the cache's memory map is read: an index on the GPU would have to come back first, a
        copy that waits for every kernel queued so far (the previous step's backward) on every step."""
        moved = super().transfer_batch_to_device(batch, device, dataloader_idx)
        training = self._trainer is not None and self.trainer.training
        if training and isinstance(batch, (list, tuple)) and len(batch) >= 3 and isinstance(batch[2], torch.Tensor):
            moved = type(moved)([*moved[:2], batch[2], *moved[3:]])
        return moved

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels, index = batch[:3]
        copies = self._augmented_copy_keys()
        with torch.no_grad():
            x_bar = self.eval_view(images)
            # x' and the augmented copies in one batched call (independent parameters per sample): from the
            # loader's crops of the whole image (B, 1 + copies, C, s, s), else from the decoded images
            if len(batch) > 3:
                crops = batch[3]
                views = self.train_view(crops.transpose(0, 1).reshape(-1, *crops.shape[2:]))
            else:
                views = self.train_view(images.repeat(1 + len(copies), *([1] * (images.dim() - 1))))
            x_aug, *copy_batches = views.chunk(1 + len(copies))
        h_bar, z_bar = self.embed(x_bar)
        _, z = self.embed(x_aug)
        reps = self.compute_representations(x_bar, index, dict(zip(copies, copy_batches)))
        loss, terms = self.objective(z_bar, z, reps)
        self._check_finite(loss, terms)
        log = {f"train/{k}": v for k, v in terms.items()}
        if self.probe is not None:
            if self.cfg.probe.source == "labelled":
                probe_loss, probe_log = self._labelled_probe_step()
            else:
                probe_loss, probe_log = self._probe_step(h_bar.detach(), labels)
            loss = loss + probe_loss
            log.update(probe_log)
        self.log_dict(log, on_step=True, on_epoch=True, prog_bar=False, batch_size=images.shape[0])
        self.log("loss", terms["loss"], prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resuming with a changed ema_decay: a new average starts from the resumed backbone; a dropped one is
        discarded (both said in one line) instead of failing on the state dict's keys."""
        state = checkpoint["state_dict"]
        has_ema = any(k.startswith("ema_backbone.") for k in state)
        if self.ema_backbone is not None and not has_ema:
            state.update({"ema_" + k: v.clone() for k, v in state.items() if k.startswith("backbone.")})
            messages.info("ema_decay > 0 but the checkpoint has no moving average: it starts from the resumed weights")
        elif self.ema_backbone is None and has_ema:
            for key in [k for k in state if k.startswith("ema_backbone.")]:
                del state[key]
            messages.info("ema_decay is 0: the checkpoint's moving average is not kept")

    def on_train_start(self) -> None:
        self._ema_step = self.global_step  # the average moves only when an optimiser step has happened since
        if self.ema_backbone is not None and self.global_step == 0:  # start from the weights training starts from
            self.ema_backbone.load_state_dict(self.backbone.state_dict())  # (fine_tune_from loads them after __init__)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # once per optimiser step: with accumulate_grad_batches > 1 most batches end without one
        if self.ema_backbone is not None and self.global_step != self._ema_step:
            self._ema_step = self.global_step
            update_ema(self.ema_backbone, self.backbone, ema_decay_at(max(self.global_step - 1, 0), self.cfg.ema_decay))

    def _labelled_probe_step(self) -> tuple[torch.Tensor, dict]:
        """The probe's step on a full batch of labelled train images (x̄, features without gradients), drawn
        anew at every training step, as the authors' OnlineFineTuner (vkinakh/mv-mr
        src/model/self_supervised_module.py, ``on_train_batch_end``). The backbone stays in training mode, as
        theirs: the batch norms' running statistics also see these batches."""
        if self._labelled_batches is None:
            self._labelled_batches = endless_batches(
                self.trainer.datamodule.labelled_train_dataloader(shuffle=True, drop_last=True)
            )
        images, labels, _ = next(self._labelled_batches)
        with torch.no_grad():
            h = self.forward(self.eval_view(images.to(self.device, non_blocking=True)))
        return self._probe_step(h, labels.to(self.device, non_blocking=True))

    def _probe_step(self, h: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Cross-entropy of the probe over the labelled rows (label >= 0). Every row goes through the probe and the
        unlabelled ones are weighted 0, so a batch without any label (probe.source=batch on a partly unlabelled
        set) still gives the probe a (zero) gradient: DDP expects one for every parameter at every step."""
        labelled = labels >= 0
        logits = self.probe(h.float())
        per_row = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
        loss = (per_row * labelled).sum() / labelled.sum().clamp_min(1)
        if not labelled.any():
            return loss, {}
        acc = topk_correct(logits[labelled], labels[labelled], 1).float() / labelled.sum()
        return loss, {"train/probe_loss": loss.detach(), "train/probe_top1": acc}

    def _check_finite(self, loss: torch.Tensor, terms: Mapping[str, torch.Tensor]) -> None:
        """Stop before a non-finite loss reaches the weights. Under DDP every process decides together (one
        all-reduce of a flag): a process that stopped alone would leave the others waiting in the gradient
        all-reduce until the collective timeout."""
        finite = torch.isfinite(loss)
        if distributed_world_size() > 1:
            everywhere = finite.to(torch.int32)
            torch.distributed.all_reduce(everywhere, op=torch.distributed.ReduceOp.MIN)
            if not bool(everywhere) and bool(finite):
                raise NonFiniteLossError(
                    f"the loss became non-finite on another process at step {self.global_step} "
                    f"(epoch {self.current_epoch}); every process stops; the last good checkpoint is kept"
                )
        if bool(finite):
            return
        bad = [k for k, v in terms.items() if k != "loss" and not torch.isfinite(v)] or ["loss"]
        raise NonFiniteLossError(
            f"loss term '{bad[0]}' became {terms.get(bad[0], loss).item()} at step {self.global_step} "
            f"(epoch {self.current_epoch}); lower lr or check the data; the last good checkpoint is kept"
        )

    # ------------------------------------------------------------------ evaluation of the probe
    def eval_logits(self, images: torch.Tensor):
        """Online-probe logits of x̄ (None without a probe)."""
        return None if self.probe is None else self.probe(self.forward(self.eval_view(images)).float())

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        model = nn.ModuleDict({"backbone": self.backbone, "projector": self.projector})
        extra = []
        if self.probe is not None:
            extra.append(
                {
                    "params": list(self.probe.parameters()),
                    "lr": self.cfg.probe.lr,
                    "weight_decay": 0.0,
                    "lars_exclude": True,
                    "constant_lr": not self.cfg.probe.scheduled,
                }
            )
        groups = param_groups(model, self.cfg.wd, extra, self.cfg.wd_norm_and_bias)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or self.cfg.epochs))
        datamodule = getattr(self.trainer, "datamodule", None)
        images = getattr(datamodule, "num_pretrain_samples", None)
        loader_batches = images // self.cfg.batch_size if images else None
        return build_optimizer(
            self.cfg, groups, self.lr, total, steps_per_epoch, loader_batches, precision=self.trainer.precision
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(cls, path: str, map_location: str | torch.device = "cpu") -> "MVMRPretrainModule":
        """Rebuild the module from a checkpoint of this project (config and dataset info are inside)."""
        ckpt = load_checkpoint(path, map_location)
        hp = ckpt.get("hyper_parameters", {})
        cfg = build_dataclass(PretrainConfig, hp["config"])
        info = DatasetInfo(**hp["info"])
        module = cls(cfg, info)
        module.load_state_dict(ckpt["state_dict"], strict=False)
        return module
