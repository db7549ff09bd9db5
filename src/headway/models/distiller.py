"""`Distiller`: a student `LanguageModel` trained against a frozen teacher with the fused distillation loss."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from headway.loss.distill import DistillOpts, distillation_loss
from headway.models.lm import LanguageModel
from headway.types import Batch


class Distiller(LanguageModel):
    """The student (its embedding, backbone and head, as they are) plus a frozen teacher.

    In training mode `forward(batch)` runs the teacher under `torch.no_grad()` on the same batch (the
    same ids and mask spec) for its final hidden states τ (B, S, Ht), the student for its own s
    (B, S, H), and returns `headway.distillation_loss` of them against the batch's aligned labels:
    per target α·T²·D(teacher_T ‖ student_T) + (1 - α)·CE(student), reduced by the valid targets (or
    `num_items_in_batch`), never the (B·S, V) logits of either model. In eval mode (validation,
    `headway eval`) it is the student's own cross-entropy, so bits per byte are the student's.

    The teacher is not a submodule: `parameters()`, `state_dict()`, the optimizer, gradient clipping
    and checkpoints hold the student alone (a checkpoint loads as a plain `LanguageModel`); `.to()`
    moves the teacher too, and `train()` leaves it in eval mode. Its parameters never require grad.

    student, teacher: `LanguageModel`s over the same `Vocab` (the same V; each head's own soft-cap
    applies to its logits). alpha, temperature, kind, beta: as `distillation_loss`'s.
    """

    teacher: LanguageModel

    def __init__(self, student: LanguageModel, teacher: LanguageModel, *, alpha: float = 0.5,
                 temperature: float = 2.0, kind: str = "kl", beta: float = 0.5) -> None:
        super().__init__(student.embedding, student.backbone, student.head)
        if teacher.vocab_size != student.vocab_size:
            raise ValueError(f"Distiller: the teacher takes {teacher.vocab_size} ids and the student "
                             f"{student.vocab_size}; both must be built from the same Vocab")
        teacher.requires_grad_(False)
        teacher.eval()
        self.__dict__["teacher"] = teacher  # not registered: outside parameters(), state_dict() and the optimizer
        self.distill = DistillOpts(alpha, temperature, kind, beta, teacher.head.loss_options.softcap)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:  # .to(), .float(), ...
        super()._apply(fn, recurse)
        self.teacher._apply(fn, recurse)
        return self

    def __deepcopy__(self, memo: dict) -> Distiller:
        """A copy of the student that shares the (frozen) teacher instead of copying it."""
        memo[id(self.teacher)] = self.teacher
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # frozen: no dropout, whatever the student does
        return self

    def extra_repr(self) -> str:
        d = self.distill
        return (f"teacher={type(self.teacher.backbone).__name__}, alpha={d.alpha}, temperature={d.temperature}, "
                f"kind={d.kind!r}" + (f", beta={d.beta}" if d.kind == "jsd" else ""))

    def forward(self, batch: Batch, num_items_in_batch: Tensor | int | None = None, reduction: str = "mean") -> Tensor:
        if not self.training:
            return super().forward(batch, num_items_in_batch, reduction)
        with torch.no_grad():
            teacher_hidden = self.teacher.hidden(batch.input_ids, batch)  # (B, S, Ht)
        hidden = self.hidden(batch.input_ids, batch)  # (B, S, H)
        d, head, t_head = self.distill, self.head, self.teacher.head
        return distillation_loss(hidden, head.loss_weight(), teacher_hidden, t_head.loss_weight(), batch.labels,
                                 student_bias=head.bias, teacher_bias=t_head.bias, alpha=d.alpha,
                                 temperature=d.temperature, kind=d.kind, beta=d.beta,
                                 ignore_index=head.loss_options.ignore_index, softcap=head.loss_options.softcap,
                                 teacher_softcap=d.teacher_softcap, reduction=reduction,
                                 num_items_in_batch=num_items_in_batch, chunk_size=head.loss_options.chunk_size)

