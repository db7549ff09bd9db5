"""Knowledge distillation: CLM's examples, trained against a frozen teacher's distribution.

The objective only lays out the examples — exactly CLM's (`labels[t]` = the next token) — and says
that it distills (`distills = True`). The loss is the model's: a training run wraps its student and
the teacher of `--teacher` in a `headway.models.distiller.Distiller`, whose loss at each target
position is α·T²·D(teacher_T ‖ student_T) + (1 - α)·CE (`headway.distillation_loss`). Its
parameters are the run's flags (`--teacher`, `--distill-alpha`, `--distill-temperature`,
`--distill-loss`, `--distill-beta`), declared in the registration below; never part of the spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from headway.objectives.clm import CLM
from headway.objectives.registry import Codec, register
from headway.types import Vocab

FLAGS = ("teacher", "distill_alpha", "distill_temperature", "distill_loss", "distill_beta")
"""The run config fields the distillation reads (the flags `--teacher`, `--distill-*`)."""


@dataclass
class Distill(CLM):
    """CLM's layout (input ``[eos, x_1 .. x_n]``, labels ``[x_1 .. x_n, eos]``, causal); at every
    target the teacher's whole next-token distribution is a target besides the label."""

    name: str = "distill"
    distills = True  # (a class attribute: the run's model must carry a teacher)
    targets_note = ("distill: each target position is also trained toward the teacher's distribution over the "
                    "whole vocabulary at that position (the teacher reads the same inputs)")


@register("distill", "knowledge distillation from --teacher: CLM's examples, the loss against the teacher's "
          "distribution", flags=FLAGS)
def _distill(vocab: Vocab, codec: Codec) -> Distill:
    return Distill(vocab)
