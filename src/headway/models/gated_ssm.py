"""A gated state-space backbone in the style of BiGS (Wang et al. 2022), causal or bidirectional.

One layer, for x (B, S, H):

    h = LN(x);  v = gelu(W_v h)                                   (B, S, I)
    f = W_f · SSM_fwd(gelu(W_uf h))                               (B, S, H)
    b = flip(W_b · SSM_bwd(flip(gelu(W_ub h))))                   (bidirectional only)
    x = x + W_o(gelu(W_l(f ⊙ b)) ⊙ v)      or    x + W_o(gelu(W_l f) ⊙ v)   (causal)

The SSM is S4D (diagonal complex A, per channel): kernel
``K[l] = Re Σ_n C_n (e^{dt·A_n} − 1)/A_n · e^{l·dt·A_n}`` applied by an FFT convolution
zero-padded to 2L — without the padding the convolution is circular and output t sees inputs
after t (`fft_pad=False` exists only to demonstrate that leak). Packed rows are cut into their
segments before the convolution, so no state crosses a document boundary. Causal mode also has
the recurrent form ``s ← e^{dtA}·s + (e^{dtA}−1)/A·u, y = Re Σ C s + D u`` for O(1) generation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headway.masks import segment_starts
from headway.models.registry import BackboneSpec, BuildRequest, register_backbone
from headway.types import Batch


@dataclass
class GatedSSMConfig:
    """The gated SSM's shape: hidden size, layers, state size of the S4D kernel, and
    `bidirectional` (a backward branch for MLM; causal otherwise)."""

    hidden_size: int = 256
    num_layers: int = 4
    intermediate_size: int | None = None  # default 3 * hidden_size (as released BiGS: 1024 -> 3072)
    num_modes: int = 32
    bidirectional: bool = False
    fft_pad: bool = True
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    @property
    def inner(self) -> int:
        return self.intermediate_size or 3 * self.hidden_size


class S4D(nn.Module):
    """Diagonal SSM over D channels with N complex modes each; input/output (B, D, L)."""

    def __init__(self, channels: int, modes: int, dt_min: float, dt_max: float, fft_pad: bool = True) -> None:
        super().__init__()
        D, N = channels, modes
        self.log_dt = nn.Parameter(torch.rand(D) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_neg_re = nn.Parameter(torch.full((D, N), math.log(0.5)))
        self.im = nn.Parameter(math.pi * torch.arange(N).float().expand(D, N).clone())
        self.c = nn.Parameter(torch.randn(D, N, 2) * 0.5**0.5)
        self.d = nn.Parameter(torch.ones(D))
        self.fft_pad = fft_pad

    def _discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """(dt·A, dB, C), each (D, N) complex, with dB = (e^{dt A} - 1)/A."""
        A = torch.complex(-torch.exp(self.log_neg_re), self.im)
        dtA = A * torch.exp(self.log_dt)[:, None]
        return dtA, (torch.exp(dtA) - 1) / A, torch.view_as_complex(self.c)

    def kernel(self, L: int) -> Tensor:
        """(D, L) real kernel K[l] = Re Σ_n C_n dB_n e^{l·dt·A_n}."""
        dtA, dB, C = self._discrete()
        powers = torch.exp(dtA[..., None] * torch.arange(L, device=dtA.device))  # (D, N, L)
        return torch.einsum("dn,dnl->dl", C * dB, powers).real

    def forward(self, u: Tensor) -> Tensor:
        L = u.shape[-1]
        uf = u if u.dtype == torch.float64 else u.float()
        k = self.kernel(L).to(uf.dtype)
        n = 2 * L if self.fft_pad else L
        y = torch.fft.irfft(torch.fft.rfft(uf, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]
        return (y + uf * self.d[:, None]).to(u.dtype)

    def final_state(self, u: Tensor) -> Tensor:
        """(B, D, N) complex state after consuming u (B, D, L): Σ_j dA^{L-1-j} dB u_j."""
        L = u.shape[-1]
        dtA, dB, _ = self._discrete()
        w = torch.exp(dtA[..., None] * torch.arange(L - 1, -1, -1, device=u.device)) * dB[..., None]  # (D, N, L)
        return torch.einsum("bdl,dnl->bdn", u.float().to(w.dtype), w)

    def step(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One token: u (B, D) -> (y (B, D), new state (B, D, N))."""
        dtA, dB, C = self._discrete()
        state = torch.exp(dtA) * state + dB * u.float()[..., None]
        y = (C * state).sum(-1).real + self.d * u.float()
        return y.to(u.dtype), state


def segments(batch: Batch) -> tuple[Tensor, Tensor, int, int]:
    """Map each position of a packed (B, S) batch to (segment, offset) for a (num_segments, L_max) layout."""
    B, S = batch.document_ids.shape
    new = segment_starts(batch.document_ids)
    seg = torch.cumsum(new.long(), 0) - 1  # (B*S,)
    starts = new.nonzero().squeeze(1)
    offset = torch.arange(B * S, device=new.device) - starts[seg]
    return seg, offset, int(seg[-1]) + 1, int(offset.max()) + 1


class GatedSSMLayer(nn.Module):
    def __init__(self, c: GatedSSMConfig) -> None:
        super().__init__()
        H, I = c.hidden_size, c.inner
        self.norm = nn.LayerNorm(H)
        self.w_v, self.w_uf, self.w_f = nn.Linear(H, I), nn.Linear(H, H), nn.Linear(H, H)
        self.ssm_f = S4D(H, c.num_modes, c.dt_min, c.dt_max, c.fft_pad)
        self.bidirectional = c.bidirectional
        if c.bidirectional:
            self.w_ub, self.w_b = nn.Linear(H, H), nn.Linear(H, H)
            self.ssm_b = S4D(H, c.num_modes, c.dt_min, c.dt_max, c.fft_pad)
        self.w_l, self.w_o = nn.Linear(H, I), nn.Linear(I, H)

    def _conv(self, ssm: S4D, u: Tensor, layout, flip: bool) -> Tensor:
        """Apply an SSM along the sequence of u (B, S, H) within each segment of `layout`."""
        B, S, H = u.shape
        if layout is None:
            x = u.flip(1) if flip else u
            y = ssm(x.transpose(1, 2)).transpose(1, 2)
            return y.flip(1) if flip else y
        seg, off, n, L = layout
        pad = u.new_zeros(n, L, H)
        pad[seg, off] = u.reshape(B * S, H)
        if flip:  # a flipped segment starts with padding zeros, which add nothing to a causal conv
            pad = pad.flip(1)
        y = ssm(pad.transpose(1, 2)).transpose(1, 2)
        if flip:
            y = y.flip(1)
        return y[seg, off].reshape(B, S, H)

    def forward(self, x: Tensor, layout, state: list | None = None) -> Tensor:
        h = self.norm(x)
        v = F.gelu(self.w_v(h))
        u = F.gelu(self.w_uf(h))
        if state is not None and state[0] is not None:  # recurrent steps (causal generation)
            ys = []
            s = state[0]
            for t in range(u.shape[1]):
                y_t, s = self.ssm_f.step(u[:, t], s)
                ys.append(y_t)
            state[0] = s
            f = self.w_f(torch.stack(ys, 1))
        else:
            f = self.w_f(self._conv(self.ssm_f, u, layout, False))
            if state is not None:
                state[0] = self.ssm_f.final_state(u.transpose(1, 2))
        if self.bidirectional:
            b = self.w_b(self._conv(self.ssm_b, F.gelu(self.w_ub(h)), layout, True))
            f = f * b
        return x + self.w_o(F.gelu(self.w_l(f)) * v)


class SSMCache:
    def __init__(self, num_layers: int) -> None:
        self.states: list[list] = [[None] for _ in range(num_layers)]
        self.length = 0


class GatedSSM(nn.Module):
    """(B, S, H) -> (B, S, H). Ignores bidirectional prefixes in causal mode (causal throughout)."""

    def __init__(self, config: GatedSSMConfig) -> None:
        super().__init__()
        self.config = config
        self.causal = not config.bidirectional
        self.layers = nn.ModuleList(GatedSSMLayer(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size)

    attention_layers = 0  # no attention: the FLOP count is 6·N

    def new_cache(self, batch_size: int) -> SSMCache:
        if not self.causal:
            raise ValueError("GatedSSM: a bidirectional model cannot generate left to right")
        return SSMCache(len(self.layers))

    def forward(self, x: Tensor, batch: Batch | None = None, cache: SSMCache | None = None) -> Tensor:
        layout = None
        # causal: trailing padding comes after every real position, so it changes none of them
        plain = batch is None or batch.is_one_document_per_row or (
            self.causal and batch.is_one_document_per_row_then_padding)
        if not plain:
            layout = segments(batch)
        for i, layer in enumerate(self.layers):
            x = layer(x, layout, None if cache is None else cache.states[i])
        if cache is not None:
            cache.length += x.shape[1]
        return self.norm(x)


def _build(r: BuildRequest) -> GatedSSM:
    return GatedSSM(GatedSSMConfig(hidden_size=r.hidden_size, num_layers=r.num_layers, bidirectional=r.bidirectional))


register_backbone(BackboneSpec(
    name="gated_ssm", help="BiGS-style S4D; bidirectional for mlm", build=_build, follows_mask=False,
    bidirectional=True, packs_documents=True))
