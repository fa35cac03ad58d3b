"""Top-1 / top-5 accuracy over a whole validation or test split, summed across DDP ranks (shared by modules)."""

from __future__ import annotations

from typing import Dict, Optional

import torch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Number of rows of ``logits`` (N, K) whose top-k classes contain ``labels`` (N,)."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum()


class TopKEvaluation:
    """LightningModule mixin: ``validation_step``/``test_step`` accumulate (top-1, top-5, n) counts of
    ``eval_logits(images)``; the epoch end gathers them over ranks and logs ``<stage>/top1`` and ``/top5``."""

    def eval_logits(self, images: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, K) logits of a uint8 batch, or None when the module has nothing to evaluate."""
        raise NotImplementedError

    def _eval_step(self, batch, stage: str) -> None:
        images, labels, _ = batch
        logits = self.eval_logits(images)
        if logits is None:
            return
        counts: Dict[str, torch.Tensor] = self.__dict__.setdefault("_topk_counts", {})
        total = counts.setdefault(stage, torch.zeros(3, device=self.device))
        total += torch.stack(
            [
                topk_correct(logits, labels, 1),
                topk_correct(logits, labels, 5),
                torch.tensor(labels.numel(), device=self.device),
            ]
        ).to(total)

    def _eval_epoch_end(self, stage: str) -> None:
        counts = self.__dict__.get("_topk_counts", {}).pop(stage, None)
        if counts is None:
            return
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).reshape(-1, 3).sum(0)
        total = counts[2].clamp_min(1)
        self.log(f"{stage}/top1", 100 * counts[0] / total, prog_bar=True)
        self.log(f"{stage}/top5", 100 * counts[1] / total)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
