"""PriMaPs-EM: class prototypes fitted by stochastic EM on the principal mask proposals.

The prototypes are a weight-normalised 1x1 convolution over frozen patch features (a cosine
classifier with a learnable scale per class), started from k-means centroids. A teacher, the
exponential moving average of the student, labels every pixel; inside each proposal the
teacher's majority label becomes the pseudo label (E-step), which the student learns with a
focal loss (M-step); the teacher follows the student every ``ema_every`` steps with a decay that
warms up to ``decay``. The teacher's prototypes are the result.
"""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datus.primaps.proposals import BACKGROUND, majority_vote


def check_decay(decay: float, setting: str = "method.decay") -> float:
    """``decay`` if it is in [0, 1), else a ValueError naming ``setting``."""
    if isinstance(decay, bool) or not 0 <= float(decay) < 1:
        raise ValueError(f"{setting}={decay}: the teacher's EMA decay must be in [0, 1)")
    return float(decay)


class Prototypes(nn.Module):
    """``(B, D, h, w)`` features -> ``(B, K, h, w)`` logits ``g_k <x, v_k / |v_k|>``: a weight-normalised 1x1
    convolution without bias, started from ``centroids`` (``(K, D)``) with every scale ``g_k = 1``."""

    def __init__(self, centroids: Tensor) -> None:
        super().__init__()
        k, dim = centroids.shape
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(dim, k, 1, bias=False), dim=0)
        with torch.no_grad():
            self.conv.parametrizations.weight.original0.fill_(1.0)
            self.conv.parametrizations.weight.original1.copy_(F.normalize(centroids.float(), dim=1)[:, :, None, None])

    @property
    def k(self) -> int:
        return self.conv.out_channels

    def forward(self, features: Tensor) -> Tensor:
        batch, _, h, w = features.shape  # the 1x1 convolution as one matrix product: faster on a CPU
        return (self.conv.weight.flatten(1) @ features.flatten(2)).reshape(batch, -1, h, w)

    def directions(self) -> Tensor:
        """``(K, D)`` unit prototype directions (what labels a feature: its most aligned prototype)."""
        return F.normalize(self.conv.parametrizations.weight.original1.detach().flatten(1), dim=1)


def class_focal_loss(logits: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Cross-entropy with each class weighted by ``(1 - its mean predicted probability)^gamma`` (PriMaPs'
    focal weighting: confident, frequent classes count less), averaged over every pixel; background
    (:data:`BACKGROUND`) pixels contribute nothing."""
    with torch.no_grad():
        weight = (1 - logits.softmax(dim=1).mean(dim=(0, 2, 3))) ** gamma
    loss = F.cross_entropy(logits, target.long(), weight=weight, ignore_index=BACKGROUND, reduction="none")
    return loss.mean()


class PriMaPsModule(pl.LightningModule):
    """Student prototypes trained on majority-voted proposals; ``teacher`` is their moving average.

    A batch is a list of ``(features (D, h, w), proposals (H, W))`` (sizes may differ between images):
    logits are made on the patch grid and upsampled bilinearly to the proposals' grid (a 1x1
    convolution commutes with bilinear upsampling, so this equals upsampling the features first).
    """

    def __init__(self, centroids: Tensor, *, decay: float = 0.98, ema_every: int = 10, lr: float = 5e-3,
                 gamma: float = 2.0, flip: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["centroids"])
        self.decay = check_decay(decay)
        self.student = Prototypes(centroids)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        #: the optimiser step the teacher last followed (checkpointed, so a resumed fit neither skips nor repeats one)
        self.register_buffer("ema_step", torch.zeros((), dtype=torch.long))

    def _logits(self, head: Prototypes, features: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(head(features[None].float()), size=size, mode="bilinear", align_corners=False)[0]

    @torch.no_grad()
    def teacher_labels(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """The teacher's ``(H, W)`` per-pixel labels of one image's ``(D, h, w)`` features on a ``size`` grid."""
        return self._logits(self.teacher, features, size).argmax(dim=0)

    def pseudo_labels(self, features: Tensor, proposals: Tensor) -> Tensor:
        """E-step: the teacher's per-pixel labels, voted inside each proposal."""
        return majority_vote(self.teacher_labels(features, tuple(proposals.shape)), proposals, self.student.k)

    def training_step(self, batch: list[tuple[Tensor, Tensor]], batch_idx: int) -> Tensor:
        flips = torch.rand(len(batch)) < 0.5 if self.hparams.flip else torch.zeros(len(batch), dtype=torch.bool)
        groups: dict[tuple, list[tuple[Tensor, Tensor]]] = {}
        for (features, proposals), flip in zip(batch, flips):
            if flip:
                features, proposals = features.flip(-1), proposals.flip(-1)
            groups.setdefault((*features.shape, *proposals.shape), []).append((features, proposals))
        losses, sizes = [], []
        for items in groups.values():  # images of one size are one batched computation
            features = torch.stack([f for f, _ in items]).float().contiguous()
            proposals = torch.stack([p for _, p in items])
            size = tuple(proposals.shape[-2:])
            with torch.no_grad():
                labels = F.interpolate(self.teacher(features), size=size, mode="bilinear",
                                       align_corners=False).argmax(dim=1)
            target = torch.stack([majority_vote(lab, prop, self.student.k) for lab, prop in zip(labels, proposals)])
            logits = F.interpolate(self.student(features), size=size, mode="bilinear", align_corners=False)
            losses.append(class_focal_loss(logits, target, self.hparams.gamma))
            sizes.append(len(items))
        loss = sum(loss * n for loss, n in zip(losses, sizes)) / sum(sizes)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def current_decay(self) -> float:
        """The EMA decay of the next update: ``1 - 1/(1 + e)`` after ``e`` updates, at most ``decay`` (the
        first update copies the student)."""
        updates = int(self.ema_updates)
        return 0.0 if updates == 0 else min(self.decay, 1 - 1 / (1 + updates))

    @torch.no_grad()
    def update_teacher(self) -> None:
        decay = self.current_decay()
        for teacher, student in zip(self.teacher.parameters(), self.student.parameters()):
            teacher.mul_(decay).add_(student.detach(), alpha=1 - decay)
        self.ema_updates += 1

    def _follow(self) -> None:
        """Update the teacher after every ``ema_every``-th optimiser step, once. Called before each batch
        and when training ends, not after a batch: Lightning checkpoints after a batch before the module's
        own hook runs, so an update there would be lost by a fit resumed from that checkpoint."""
        step = self.global_step
        if step > 0 and step % self.hparams.ema_every == 0 and step > int(self.ema_step):
            self.update_teacher()
            self.ema_step.fill_(step)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._follow()

    def on_train_end(self) -> None:
        self._follow()

    def configure_optimizers(self):
        return torch.optim.Adam(self.student.parameters(), lr=self.hparams.lr)
