"""Masked diffusion language modelling (MDLM, Sahoo et al. 2024; LLaDA, Nie et al. 2025)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headway.constants import IGNORE_INDEX
from headway.objectives.base import check_document
from headway.objectives.registry import Codec, register
from headway.types import Example, Objective, Vocab

EPS = 1e-3  # the smallest masking rate a training example draws: t ~ U(EPS, 1)


@dataclass
class MaskedDiffusion:
    """The absorbing-state (masking) diffusion objective of MDLM and LLaDA, one document per example.

    Forward process: for a document x of L tokens draw t ~ U(ε, 1), then replace each token by
    `<mask>` independently with probability t, giving x_t. The model sees x_t bidirectionally (the
    whole example is its prefix, MLM's mask spec) and is trained to predict x^i at each masked i:

        labels[i]       = x^i     where x_t^i = <mask>,  IGNORE_INDEX elsewhere
        loss_weights[i] = 1 / t   where x_t^i = <mask>,  0 elsewhere
        num_items       = L       (`Example.num_items`: a weighted example counts every position)

    With t ~ U(0, 1] the weighted sum is the continuous-time ELBO (LLaDA eq. 3, MDLM eq. 10):

        -log p_θ(x | L) <= E_t E_{x_t} [ (1/t) Σ_{i: x_t^i = <mask>} -log p_θ(x^i | x_t) ].

    Normalization (LLaDA's estimator through the per-token weights). `linear_cross_entropy`'s mean is
    Σ w·ℓ / num_items_in_batch, and the trainer passes `Batch.num_items` = Σ_e L_e, the summed lengths
    of the batch's examples e (with their times t_e), so a batch's loss is

        loss = Σ_e Σ_{i masked in e} CE_i / t_e  /  Σ_e L_e
             = Σ_e (L_e / Σ_e' L_e') · est_e,    est_e = (1 / L_e) Σ_{i masked in e} CE_i / t_e,

    the mean of each example's LLaDA estimate est_e ("Σ over masked positions of CE / t, divided by
    the example's length") weighted by its length: LLaDA's pre-training `(CE / p_mask).sum() / (B·L)`
    for rows of equal length, and the ELBO per token for rows that differ. Mixed with CLM, a CLM
    token counts once in the same denominator, so each objective gets its share of the tokens.

    Why ε: the weight 1/t makes the estimate's variance grow without bound as t -> 0 (one masked
    token weighted 1/t); t >= ε = 1e-3 bounds every weight by 1000. The training estimate then
    covers ∫_ε^1 of the ELBO's integral; validation uses the unbiased form with no ε
    (`headway.train.diffusion_eval`).

    Why plain uniform t, not stratified within a loader window: the objective sees one document at a
    time with the loader's generator, and the loader draws each batch's rows at random from a window of
    up to 8192 examples (`headway.data.loader`), so stratifying t over a window's examples would not
    stratify any one batch: a batch's t's would still be close to independent draws. Getting MDLM's
    low-discrepancy batches would need the loader to assign t's per batch after shuffling, a new
    contract between loader and objective, for a variance gain that large batches of packed documents
    already mostly give. Plain uniform keeps each example a function of (document, generator state),
    so exact resume and any number of loader workers give the same examples.
    """

    vocab: Vocab
    eps: float = EPS
    name: str = "diffusion"
    needs_bidirectional = True  # (class attributes, not fields: what the objective needs of the model)
    trains_left_to_right = False
    masked_diffusion = True  # samples by unmasking (`headway.models.diffusion_sampling`), scored by its ELBO
    text_lead = None

    def __post_init__(self) -> None:
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"MaskedDiffusion: `eps` must be in (0, 1), got {self.eps}")
        self.mask_id = self.vocab.id("<mask>")

    def draw_t(self, rng: np.random.Generator) -> float:
        """One masking rate t ~ U(eps, 1)."""
        return float(self.eps + (1.0 - self.eps) * rng.random())

    def example(self, tokens: np.ndarray, t: float, rng: np.random.Generator) -> Example:
        """The example of `tokens` at masking rate `t` (each token masked with probability t)."""
        tokens = check_document(tokens, self.vocab.base_size, self.name)
        if not 0.0 < t <= 1.0:
            raise ValueError(f"{self.name}: the masking rate t must be in (0, 1], got {t}")
        masked = rng.random(len(tokens)) < t  # (L,)
        ids = np.where(masked, self.mask_id, tokens)
        labels = np.where(masked, tokens, IGNORE_INDEX)
        weights = np.where(masked, np.float32(1.0 / t), np.float32(0.0)).astype(np.float32)
        return Example(ids, labels, prefix_length=len(ids), loss_weights=weights)

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> Example:
        return self.example(tokens, self.draw_t(rng), rng)

    def max_tokens(self, row_length: int) -> int:
        return row_length


def is_masked_diffusion(objective: Objective) -> bool:
    """Whether `objective` (or a member of a mixture with a positive weight) is masked diffusion."""
    return bool(getattr(objective, "masked_diffusion", False))


@register("diffusion", "masked diffusion (MDLM/LLaDA): per document t ~ U(0.001, 1), each token masked with "
          "probability t, predicted from both sides with weight 1/t")
def _diffusion(vocab: Vocab, codec: Codec) -> MaskedDiffusion:
    return MaskedDiffusion(vocab)
