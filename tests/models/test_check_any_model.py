"""The causality check on models written outside headway: leaks only one detector or one mode can
see, honest models with no legitimate early dependence, length-dependent leaks, rows and packed
documents, HF models and callables, the report and its heat map."""

import pytest
import torch
from torch import nn

from headway.check import check_causal
from headway.testing import assert_causal

H = 8


def causal_mix(x: torch.Tensor) -> torch.Tensor:
    """An honest causal mixing: running mean over the positions so far."""
    n = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
    return x.cumsum(1) / n


class BatchNormOverTime(nn.Module):
    """BatchNorm over (rows, positions): statistics of the whole batch in train mode only."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(H, H)
        self.bn = nn.BatchNorm1d(H)

    def forward(self, x):
        return self.bn(causal_mix(self.lin(x)).transpose(1, 2)).transpose(1, 2)


class DetachedCentring(nn.Module):
    """Subtracts the sequence mean computed without a gradient: invisible to the gradient test."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(H, H)

    def forward(self, x):
        h = causal_mix(self.lin(x))
        return h - h.mean(1, keepdim=True).detach()


class ExpertChoice(nn.Module):
    """Expert-choice routing: the top quarter of positions by score over the whole sequence get
    the expert; the choice has no gradient path."""

    def __init__(self):
        super().__init__()
        self.score, self.expert = nn.Linear(H, 1), nn.Linear(H, H)

    def forward(self, x):
        s = self.score(x).squeeze(-1)  # (B, S)
        k = max(1, x.shape[1] // 4)
        chosen = torch.zeros_like(s).scatter(1, s.topk(k, dim=1).indices, 1.0)
        return causal_mix(x) + chosen[..., None] * self.expert(x)


class CausalFFTConv(nn.Module):
    """y[t] = sum_{l >= 1} k[l] u[t - l]: strictly causal, output 0 depends on nothing. With
    `wrap_at_powers_of_two` the FFT size is L when L is a power of two (a circular leak at those
    lengths only), else 2L."""

    def __init__(self, wrap_at_powers_of_two=False):
        super().__init__()
        self.k = nn.Parameter(torch.randn(H, 64) * 0.5)
        self.wrap = wrap_at_powers_of_two

    def forward(self, x):
        L = x.shape[1]
        k = self.k[:, :L].clone()
        k[:, 0] = 0  # no residual: y[0] has no legitimate dependence
        n = L if self.wrap and L & (L - 1) == 0 else 2 * L
        u = x.transpose(1, 2)
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]
        return y.transpose(1, 2)


class RowMixer(nn.Module):
    """Adds the batch mean: every row depends on the others, in any mode."""

    def forward(self, x):
        return causal_mix(x) + x.mean(0, keepdim=True)


def _kinds(rep):
    return {(f.detector, f.mode, f.kind) for f in rep.findings}


def test_batchnorm_over_time_leaks_in_train_mode_only():
    rep = check_causal(BatchNormOverTime(), hidden_size=H, packed=False)
    assert not rep.ok
    assert {m for _, m, _ in _kinds(rep)} == {"train"}
    assert ("gradient", "train", "future") in _kinds(rep) and ("gradient", "train", "other row") in _kinds(rep)
    assert check_causal(BatchNormOverTime(), hidden_size=H, packed=False, modes=("eval",)).ok


@pytest.mark.parametrize("net", [DetachedCentring(), ExpertChoice()], ids=["detached-mean", "expert-choice"])
def test_leaks_without_a_gradient_path_are_caught_by_the_black_box_detector(net):
    assert check_causal(net, hidden_size=H, packed=False, detectors=("gradient",)).ok  # gradient alone: blind
    rep = check_causal(net, hidden_size=H, packed=False)
    assert not rep.ok and {d for d, _, _ in _kinds(rep)} == {"black-box"}
    assert any(f.kind == "future" for f in rep.findings)


def test_no_false_positive_when_early_outputs_have_no_legitimate_dependence():
    rep = check_causal(CausalFFTConv(), hidden_size=H, packed=False)
    assert rep.ok, str(rep)


def test_a_leak_at_some_lengths_only_is_found_by_checking_several():
    net = CausalFFTConv(wrap_at_powers_of_two=True)
    assert check_causal(net, hidden_size=H, packed=False, lengths=(15, 17, 33)).ok
    rep = check_causal(net, hidden_size=H, packed=False)  # the default lengths include 16
    assert not rep.ok and {f.length for f in rep.findings} == {16}


def test_rows_that_read_each_other_leak_in_eval_mode_too():
    rep = check_causal(RowMixer(), hidden_size=H, packed=False)
    assert not rep.ok and {k for _, _, k in _kinds(rep)} == {"other row"}
    assert {m for _, m, _ in _kinds(rep)} == {"train", "eval"}
    assert check_causal(RowMixer(), hidden_size=H, packed=False, rows=1).ok  # one row cannot show it


def test_callable_on_ids_black_box_only():
    emb = nn.Embedding(50, H)

    def honest(ids):
        return causal_mix(emb(ids))

    def leaky(ids):
        return causal_mix(emb(ids).flip(1)).flip(1)  # a reversed running mean reads the future

    rep = check_causal(honest, vocab_size=50)
    assert rep.ok and any("gradient" in s for s in rep.skipped) and any("packed" in s for s in rep.skipped)
    bad = check_causal(leaky, vocab_size=50)
    assert not bad.ok and bad.findings[0].detector == "black-box" and bad.findings[0].pairs[0][0] == 0


def test_hf_llama_is_causal_also_with_packed_position_ids():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    rep = check_causal(transformers.LlamaForCausalLM(cfg), lengths=(9, 16))
    assert rep.ok, str(rep)
    assert any(c.startswith("gradient") for c in rep.checked) and any(c.startswith("black-box") for c in rep.checked)


def test_hf_bidirectional_model_is_named_down_to_the_submodule(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64)
    rep = check_causal(transformers.BertForMaskedLM(cfg), lengths=(12,))
    assert not rep.ok
    f = rep.findings[0]
    assert f.kind == "future" and f.module.startswith("bert.encoder.layer.0.attention")  # tuple outputs handled
    png = rep.save_heatmap(tmp_path / "leak.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 2000
    assert "NOT causal" in str(rep) and "bert.encoder.layer.0" in str(rep)


def test_assert_causal_for_pytest():
    assert_causal(CausalFFTConv(), hidden_size=H, packed=False)
    with pytest.raises(AssertionError, match="NOT causal"):
        assert_causal(RowMixer(), hidden_size=H, packed=False)


def test_the_check_does_not_modify_the_model():
    net = BatchNormOverTime()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    check_causal(net, hidden_size=H, packed=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # running stats untouched
    assert net.training  # its mode too


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        check_causal(lambda ids: ids)
    with pytest.raises(ValueError, match="lengths"):
        check_causal(RowMixer(), hidden_size=H, lengths=(1,))
    with pytest.raises(ValueError, match="detector"):
        check_causal(RowMixer(), hidden_size=H, detectors=("magic",))


def test_headway_check_cli_on_classes_and_the_hf_table(capsys, tmp_path):
    pytest.importorskip("transformers")
    from headway.cli import main

    assert main(["check", "LlamaForCausalLM", "--lengths", "9,16"]) == 0
    assert "causal:" in capsys.readouterr().out
    png = tmp_path / "bert.png"
    assert main(["check", "BertForMaskedLM", "--lengths", "12", "--png", str(png)]) == 1  # bidirectional as it ships
    out = capsys.readouterr().out
    assert "NOT causal: future" in out and "out 0 <- in " in out and png.exists()
    assert main(["check", "BertLMHeadModel", "--lengths", "12"]) == 0  # the same encoder built as a decoder
    assert main(["check", "RobertaForCausalLM", "--lengths", "12"]) == 0
    assert "causal:" in capsys.readouterr().out
    # a fixed subset of the table in CI; `python bench/check_hf.py` runs every class
    assert main(["check", "--all-hf", "--only", "LlamaForCausalLM,Qwen2ForCausalLM,BertLMHeadModel"]) in (0, 1)
    out = capsys.readouterr().out
    assert "| LlamaForCausalLM | causal |" in out and "| Qwen2ForCausalLM | causal |" in out
    assert main(["check", "NoSuchModel"]) == 2


def test_hf_classes_are_built_the_way_their_users_build_them():
    transformers = pytest.importorskip("transformers")
    from headway.check.hf_table import builds_as_decoder, tiny_config

    for name in ("BertLMHeadModel", "RobertaForCausalLM", "BertGenerationDecoder", "LlamaForCausalLM"):
        assert builds_as_decoder(getattr(transformers, name)), name
    for name in ("BertForMaskedLM", "RobertaForMaskedLM", "BertModel", "BertForSequenceClassification"):
        assert not builds_as_decoder(getattr(transformers, name)), name
    assert tiny_config(transformers.BertLMHeadModel).is_decoder is True
    assert tiny_config(transformers.BertForMaskedLM).is_decoder is False  # the config's own default
    with pytest.raises(ValueError, match="model_class"):
        tiny_config(transformers.BertConfig)


def test_headway_check_on_a_local_hf_folder_and_a_headway_run(tmp_path, corpus, capsys):
    transformers = pytest.importorskip("transformers")
    from headway.cli import main
    from tests.support import train_args

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    assert main(["check", str(tmp_path / "hf"), "--lengths", "9"]) == 0
    assert main(train_args(corpus, tmp_path / "run")) == 0
    capsys.readouterr()
    assert main(["check", str(tmp_path / "run"), "--lengths", "9,16"]) == 0
    assert "causal:" in capsys.readouterr().out
