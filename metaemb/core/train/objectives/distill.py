"""Knowledge distillation: a task loss plus λ × a term pulling the student towards a teacher.

The objective sees only the student's embeddings, so the engine runs the (frozen) teacher on the
same batch and sets `objective.teacher_outputs` before each call (it is consumed by the call):

- `kd="embedding"`: teacher embeddings [N, d_t]. The student embedding, passed through a learned
  linear projection when `teacher_dim` differs from the student's dim, is compared after L2
  normalisation: `embedding_loss="mse"` gives ‖ŝ − t̂‖² (= 2 − 2 cos), `"cosine"` gives 1 − cos.
- `kd="logits"`: teacher logits [N, C] over the same training classes as the student's task
  classifier (softmax or margin head); T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), T = 4.

total = task loss + λ·KD (`task="none"` trains on the KD term alone). Batches are "random" (what
softmax and margin tasks need); with task triplet or contrastive set train.sampler=pk or pairs. The task classifier and the
projection live in the module `build_classifier` returns, never in the loss.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from metaemb.core.errors import ConfigError, DataError, UnknownComponentError
from metaemb.core.plugin.components import build_part
from metaemb.core.plugin.interfaces import Objective
from metaemb.core.train.objectives.softmax import full_precision

KD_KINDS = ("embedding", "logits")
EMBEDDING_LOSSES = ("mse", "cosine")


class DistillHead(nn.Module):
    """Training-only modules of distillation: the task's classifier and the projection."""

    def __init__(self, task: nn.Module | None, projection: nn.Module | None) -> None:
        super().__init__()
        self.task = task
        self.projection = projection


def build_task(task: Any) -> Objective | None:
    """The task objective, any registered point-embedding objective (a name or a table
    [objective.task] name = "arcface", margin = …), through the registry; None for "none"."""
    try:
        obj = build_part("objectives", task, "softmax")
    except UnknownComponentError as exc:
        raise ConfigError(f"objective 'distill': task: {exc}") from None
    if obj is None:
        return None
    name = task.get("name") if isinstance(task, dict) else task
    if isinstance(obj, DistillObjective) or getattr(obj, "needs", "point") != "point":
        raise ConfigError(
            f"objective 'distill': task '{name}' must be a point-embedding objective other than "
            "distill (softmax, arcface, cosface, triplet, contrastive, …) or 'none'."
        )
    return obj


def has_classifier(task: Objective | None) -> bool:
    """Whether the task scores classes (a classifier module), so logit KD applies to it."""
    return task is not None and task.build_classifier(2, 2) is not None


def logit_kd(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch."""
    t = F.log_softmax(full_precision(teacher) / temperature, dim=1)
    s = F.log_softmax(full_precision(student) / temperature, dim=1)
    return temperature**2 * (t.exp() * (t - s)).sum(1).mean()


class DistillObjective(Objective):
    """Task loss + λ·knowledge distillation from teacher outputs set per batch by the engine."""

    batch: ClassVar[str] = "random"
    parts: ClassVar[dict[str, str]] = {"task": "objectives"}  # [objective.task] name = …

    def __init__(
        self,
        task: dict[str, Any] | str = "softmax",
        weight: float = 1.0,
        kd: str = "embedding",
        embedding_loss: str = "mse",
        temperature: float = 4.0,
        teacher_dim: int = 0,
    ) -> None:
        super().__init__()
        if kd not in KD_KINDS:
            raise ConfigError(f"objective 'distill': kd must be one of {', '.join(KD_KINDS)}.")
        if embedding_loss not in EMBEDDING_LOSSES:
            raise ConfigError(
                f"objective 'distill': embedding_loss must be one of {', '.join(EMBEDDING_LOSSES)}."
            )
        if temperature <= 0 or weight < 0 or teacher_dim < 0:
            raise ConfigError(
                "objective 'distill': temperature must be > 0, weight and teacher_dim >= 0."
            )
        self.task: Objective | None = build_task(task)
        if kd == "logits" and not has_classifier(self.task):
            raise ConfigError(
                "objective 'distill': kd='logits' needs a classifier task (softmax, arcface or "
                f"cosface) over the teacher's classes; got task '{task}'."
            )
        self.weight = float(weight)
        self.kd = kd
        self.embedding_loss = embedding_loss
        self.temperature = float(temperature)
        self.teacher_dim = int(teacher_dim)
        self.teacher_outputs: Tensor | None = None

    def teacher_kind(self) -> str | None:
        return self.kd

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.task is not None:
            self.task.set_epoch(epoch)

    def end_epoch(self) -> list[str]:
        return self.task.end_epoch() if self.task is not None else []

    def build_classifier(self, dim: int, num_classes: int) -> nn.Module:
        task = self.task.build_classifier(dim, num_classes) if self.task is not None else None
        projection = None
        if self.kd == "embedding" and self.teacher_dim and self.teacher_dim != dim:
            projection = nn.Linear(dim, self.teacher_dim, bias=False)
        return DistillHead(task, projection)

    def _student_logits(self, embeddings: Tensor, head: DistillHead) -> Tensor:
        logits = head.task(embeddings)
        return logits * getattr(self.task, "scale", 1.0)  # margin heads' logits are s·cos

    def kd_loss(self, embeddings: Tensor, head: DistillHead, teacher: Tensor) -> Tensor:
        if len(teacher) != len(embeddings):
            raise DataError(
                f"objective 'distill': teacher outputs for {len(teacher)} samples, student "
                f"embeddings for {len(embeddings)}."
            )
        if self.kd == "logits":
            student = self._student_logits(embeddings, head)
            if student.shape != teacher.shape:
                raise DataError(
                    f"objective 'distill': teacher logits {tuple(teacher.shape)} do not match the "
                    f"student's {tuple(student.shape)}; logit KD needs the same classes "
                    "(use kd='embedding' otherwise)."
                )
            return logit_kd(student, teacher, self.temperature)
        s = head.projection(embeddings) if head.projection is not None else embeddings
        if s.shape[1] != teacher.shape[1]:
            raise ConfigError(
                f"objective 'distill': teacher embeddings have {teacher.shape[1]} dimensions, the "
                f"student's {s.shape[1]}; set objective.teacher_dim={teacher.shape[1]} so a "
                "projection is learned."
            )
        s = F.normalize(full_precision(s), dim=1)
        t = F.normalize(full_precision(teacher.detach()), dim=1)
        if self.embedding_loss == "mse":
            return (s - t).pow(2).sum(1).mean()
        return (1.0 - (s * t).sum(1)).mean()

    def __call__(self, embeddings: Tensor, labels: Tensor, classifier: nn.Module | None) -> Tensor:
        teacher, self.teacher_outputs = self.teacher_outputs, None
        if teacher is None:
            raise ConfigError(
                "objective 'distill' needs the teacher's outputs for every batch: train it "
                "with `metaemb distill --teacher CHECKPOINT`, or in a loop of your own set "
                "objective.teacher_outputs (the teacher's embeddings or logits for the batch) "
                "before each call."
            )
        if not isinstance(classifier, DistillHead):
            raise ConfigError("objective 'distill' needs the module its build_classifier made.")
        kd = self.kd_loss(embeddings, classifier, teacher.detach())
        stats = {"kd": float(kd.detach())}
        loss = self.weight * kd
        if self.task is not None:
            task_loss = self.task(embeddings, labels, classifier.task)
            loss = task_loss + loss
            stats.update({f"task_{k}": v for k, v in self.task.stats.items()})
        self.stats = {"loss": float(loss.detach()), **stats}
        return loss
