"""Objectives: property tests that a wrong layout, leak or statistic would break."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.constants import IGNORE_INDEX
from headway.objectives import (
    CLM,
    FIM,
    MLM,
    Mixture,
    PrefixLM,
    SpanCorruption,
    build_objective,
    fim_parts,
    reconstruct,
    text_lead,
    ul2,
    ul2r,
)
from headway.show import render_example
from headway.types import Vocab

V = Vocab(base_size=97, num_sentinels=40)
docs = st.lists(st.integers(0, 96), min_size=1, max_size=300).map(lambda x: np.array(x, dtype=np.int64))
seeds = st.integers(0, 2**32 - 1)


@given(docs, seeds)
def test_clm_labels_are_next_tokens_then_eos(doc, seed):
    ex = CLM(V.eos)(doc, np.random.default_rng(seed))
    assert ex.prefix_length == 0
    assert ex.input_ids[0] == V.eos
    np.testing.assert_array_equal(ex.labels[:-1], ex.input_ids[1:])
    assert ex.labels[-1] == V.eos and ex.num_targets == len(doc) + 1
    assert V.pad not in ex.labels


@given(docs, seeds)
def test_prefix_lm_loss_only_after_the_prefix(doc, seed):
    ex = PrefixLM(V.eos)(doc, np.random.default_rng(seed))
    k = ex.prefix_length
    assert 1 <= k <= max(1, len(doc) - 1) and (len(doc) == 1 or k < len(doc))
    assert (ex.labels[: k - 1] == IGNORE_INDEX).all()  # no target inside the prefix but its last position
    np.testing.assert_array_equal(ex.labels[k - 1 : -1], doc[k:])
    assert ex.labels[-1] == V.eos
    np.testing.assert_array_equal(ex.input_ids, doc)


def test_prefix_lm_split_is_uniform():
    rng = np.random.default_rng(0)
    ks = [PrefixLM(V.eos)(np.arange(5), rng).prefix_length for _ in range(4000)]
    counts = np.bincount(ks, minlength=5)[1:]
    assert counts.min() > 850 and counts.max() < 1150  # uniform on {1,2,3,4}: 1000 each


def _text_codec():
    def enc(s: str) -> list[int]:
        return list(s.encode("utf-8"))

    def dec(ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="strict")

    return enc, dec


@given(st.text(alphabet=st.characters(max_codepoint=0x7F), min_size=0, max_size=200), seeds)
def test_fim_reassembles_into_the_original_text(text, seed):
    enc, dec = _text_codec()
    vocab = Vocab(base_size=256, num_sentinels=1)
    fim = FIM(vocab, rate=1.0, encode=enc, decode=dec)
    doc = np.array(enc(text), dtype=np.int64)
    ex = fim(doc, np.random.default_rng(seed))
    mode, pre, mid, suf = fim_parts(ex.input_ids, vocab)
    assert dec(pre.tolist()) + dec(mid.tolist()) + dec(suf.tolist()) == text
    assert ex.prefix_length == 0 and ex.labels[-1] == vocab.eos
    np.testing.assert_array_equal(ex.labels[:-1], ex.input_ids[1:])


@given(st.lists(st.text(alphabet=st.characters(max_codepoint=0x3FF, blacklist_characters="\n"), max_size=12),
                max_size=8).map("\n".join), seeds)
def test_fim_line_splits_cut_right_before_line_breaks(text, seed):
    """line_rate 1: every middle is whole lines, each opening with "\n" (or empty), and the suffix
    starts at a line break or the end; the parts still reassemble, non-ASCII included."""
    enc, dec = _text_codec()
    fim = FIM(Vocab(base_size=256, num_sentinels=1), rate=1.0, line_rate=1.0, encode=enc, decode=dec)
    pre, mid, suf = fim.split(np.array(enc(text), dtype=np.int64), np.random.default_rng(seed))
    pre, mid, suf = (dec(x.tolist()) for x in (pre, mid, suf))
    assert pre + mid + suf == text
    assert mid == "" or mid.startswith("\n")
    assert suf == "" or suf.startswith("\n")


def test_fim_line_rate_is_the_share_of_line_splits():
    enc, dec = _text_codec()
    text = "".join(f"line {k} of the file, with some words\n" for k in range(40))
    fim = FIM(Vocab(base_size=256, num_sentinels=1), rate=1.0, line_rate=0.3, encode=enc, decode=dec)
    rng = np.random.default_rng(0)
    on_lines = 0
    for _ in range(2000):
        pre, mid, _ = fim.split(np.array(enc(text), dtype=np.int64), rng)
        on_lines += len(mid) > 0 and mid[0] == ord("\n") and (len(pre) == 0 or pre[-1] != ord("\n"))
    assert 0.27 < on_lines / 2000 < 0.34  # a character split lands right before a break 1 time in 38


@given(docs, seeds)
def test_fim_token_level_reassembles(doc, seed):
    ex = FIM(V, rate=1.0)(doc, np.random.default_rng(seed))
    _, pre, mid, suf = fim_parts(ex.input_ids, V)
    np.testing.assert_array_equal(np.concatenate([pre, mid, suf]), doc)


def test_fim_rate_and_spm_share():
    rng = np.random.default_rng(1)
    fim = FIM(V, rate=0.5, spm_rate=0.5)
    modes = []
    for _ in range(4000):
        ex = fim(np.arange(1000) % 97, rng)  # long: an empty prefix (PSM == SPM) is rare
        modes.append("clm" if ex.input_ids[0] == V.eos else fim_parts(ex.input_ids, V)[0])
    c = {m: modes.count(m) for m in ("clm", "psm", "spm")}
    assert 1850 < c["clm"] < 2150 and 900 < c["psm"] < 1100 and 900 < c["spm"] < 1100


@given(docs, seeds, st.sampled_from([(0.15, 3.0), (0.5, 8.0), (0.15, 64.0), (0.5, 1.0)]))
def test_span_corruption_reconstructs_the_document(doc, seed, params):
    r, mu = params
    span = SpanCorruption(V, r, mu, mode_token="[NLG]")
    ex = span(doc, np.random.default_rng(seed))
    P = ex.prefix_length
    inputs, targets = ex.input_ids[1:P], ex.input_ids[P:]
    assert ex.input_ids[0] == V.id("[NLG]")
    if len(doc) < 2:  # too short to corrupt: the document is the target
        np.testing.assert_array_equal(targets, doc)
    else:
        np.testing.assert_array_equal(reconstruct(inputs, targets, V), doc)
    assert (ex.labels[: P - 1] == IGNORE_INDEX).all() and ex.labels[-1] == V.eos
    assert len(ex) == span.example_length(len(doc))


def test_span_noise_density_and_single_span_not_always_at_the_end():
    rng = np.random.default_rng(0)
    span = SpanCorruption(V, 0.15, 3.0)
    ex = span(np.arange(568) % 97, rng)
    noise = ex.num_targets - 1 - (ex.input_ids[ex.prefix_length:] >= V.base_size).sum()
    assert noise == round(568 * 0.15)
    ends = 0
    for _ in range(300):
        e = SpanCorruption(V, 0.2, 3.0)(np.arange(10), rng)  # 2 noise tokens -> one span
        ends += e.input_ids[e.prefix_length - 1] == V.sentinel_id(0)
    assert 0 < ends < 150  # lands at the end sometimes, not always


@pytest.mark.parametrize("mode", [None, "[NLU]"])
@pytest.mark.parametrize("params", [(0.15, 3.0), (0.5, 3.0), (0.15, 8.0), (0.5, 64.0)])
def test_span_max_tokens_fills_a_row_within_two_positions_for_every_row_length(params, mode):
    """What the docstring promises: every row length from 8 to 600 is filled exactly or with at
    most 2 positions free, unless the sentinels bound the chunk; the example really has that length."""
    span = SpanCorruption(V, *params, mode_token=mode)
    for row in range(8, 601):
        n = span.max_tokens(row)
        length = span.example_length(n)
        sentinel_bound = span.counts(n + 1)[1] > V.num_sentinels
        assert length <= row and (row - length <= 2 or sentinel_bound)
        assert len(span(np.arange(n) % 97, np.random.default_rng(row))) == length


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_span_example_length_of_short_documents_is_the_real_length(n):
    for span in (SpanCorruption(V), SpanCorruption(V, mode_token="[NLG]")):
        assert span.example_length(n) == len(span(np.arange(n), np.random.default_rng(0)))


@pytest.mark.parametrize("row", [1024, 2048])
def test_ul2_denoisers_keep_their_span_statistics_on_long_rows(row):
    """The sentinel cap never bends a denoiser's mean span length: chunks get shorter instead."""
    from headway.data.packing import examples_from_documents

    vocab = Vocab(97)  # 100 sentinels, as the UL2 presets use
    for member in ul2(vocab).members:
        if not isinstance(member, SpanCorruption):
            continue
        noise = spans = 0
        doc = np.arange(20000) % 97
        for ex in examples_from_documents([doc], member, row, np.random.default_rng(0)):
            t = ex.input_ids[ex.prefix_length:]
            k = int((t >= vocab.base_size).sum())
            spans += k
            noise += len(t) - k
            assert len(ex) <= row
        mu = member.mean_span_length  # integer span counts round: 2 or 3 spans of ~64 in a 1k chunk
        assert abs(noise / spans - mu) < (0.1 if mu <= 8 else 0.25) * mu, member.name


def test_span_direct_call_that_needs_too_many_sentinels_raises():
    span = SpanCorruption(Vocab(97, num_sentinels=4), 0.5, 3.0)
    with pytest.raises(ValueError, match="sentinels"):
        span(np.arange(200) % 97, np.random.default_rng(0))


@settings(max_examples=150, deadline=None)
@given(st.floats(0.01, 0.95), st.floats(1.0, 80.0), st.integers(0, 80), seeds)
def test_every_setting_the_constructor_accepts_works_on_every_document(density, mu, n, seed):
    try:
        span = SpanCorruption(V, density, mu)
    except ValueError as e:
        assert "mean_span_length" in str(e)
        return
    doc = np.arange(n) % 97
    if span.counts(n)[1] > V.num_sentinels:
        return
    ex = span(doc, np.random.default_rng(seed))
    assert len(ex) == span.example_length(n)
    if n >= 2:
        P = ex.prefix_length
        np.testing.assert_array_equal(reconstruct(ex.input_ids[:P], ex.input_ids[P:], V), doc)


def test_span_settings_that_cannot_keep_their_statistics_are_refused():
    with pytest.raises(ValueError, match="mean_span_length >= 1.5"):
        SpanCorruption(V, 0.6, 1.0)
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="noise_density"):
            SpanCorruption(V, bad, 3.0)


def test_mlm_statistics_and_no_special_token(vocab):
    mlm = MLM(vocab)
    rng = np.random.default_rng(0)
    doc = rng.integers(0, vocab.base_size, 200)
    with_special = doc.copy()
    with_special[::10] = vocab.eos  # a special token is not document text: refused, never selected or kept
    with pytest.raises(ValueError, match="base vocabulary"):
        mlm(with_special, rng)
    sel = masked = rand = kept = 0
    for _ in range(300):
        ex = mlm(doc, rng)
        s = ex.labels != IGNORE_INDEX
        assert ex.prefix_length == len(doc)
        np.testing.assert_array_equal(ex.labels[s], doc[s])
        np.testing.assert_array_equal(ex.input_ids[~s], doc[~s])
        changed = ex.input_ids[s]
        assert not ((changed >= vocab.base_size) & (changed != mlm.mask_id)).any()
        sel += s.sum()
        masked += (changed == mlm.mask_id).sum()
        kept += (changed == doc[s]).sum()
        rand += ((changed != mlm.mask_id) & (changed != doc[s])).sum()
    n_cand = 300 * 200
    assert abs(sel / n_cand - 0.15) < 0.01
    assert abs(masked / sel - 0.8) < 0.02 and abs(rand / sel - 0.1) < 0.015 and abs(kept / sel - 0.1) < 0.015


def test_mlm_whole_word_masking_selects_whole_words(vocab):
    doc = np.arange(60) % 90
    starts = np.zeros(60, bool)
    starts[::3] = True  # words of three tokens
    mlm = MLM(vocab, word_starts=lambda t: starts)
    ex = mlm(doc, np.random.default_rng(3))
    sel = (ex.labels != IGNORE_INDEX).reshape(20, 3)
    assert sel.any() and (sel.all(1) == sel.any(1)).all()


def test_mixture_frequencies_and_parse(vocab):
    mix = build_objective("clm:0.75,prefix_lm:0.25", vocab)
    rng = np.random.default_rng(0)
    n_prefix = sum(mix(np.arange(8), rng).prefix_length > 0 for _ in range(4000))
    assert 900 < n_prefix < 1100
    assert len(ul2(vocab).members) == 7 and abs(ul2r(vocab).probs[0] - 0.5) < 1e-12


@pytest.mark.parametrize("spec", ["clm", "mlm", "prefix_lm", "fim", "span", "ul2", "ul2r", "ul2_decoder",
                                  "clm:0.5,fim:0.5", "span:3,prefix_lm:1", "ul2:1,clm:1"])
def test_text_lead_is_the_id_that_opens_the_objectives_plain_text_rows(spec):
    """Validation, sampling and infilling open a document with `text_lead`; it must be the special id
    that opens most of the rows where the objective predicts the document's text left to right
    (targets = a tail of the document, then EOS). UL2 has no such row opening with EOS: scoring it
    behind EOS scores it on inputs it never saw."""
    obj = build_objective(spec, V)
    rng = np.random.default_rng(0)
    doc = np.arange(40) % 90
    opens: dict[int, int] = {}
    for _ in range(1500):
        ex = obj(doc, rng)
        y = ex.labels[ex.labels != IGNORE_INDEX]
        tail = len(y) - 1
        plain = 1 <= tail <= len(doc) and y[-1] == V.eos and (y[:-1] == doc[len(doc) - tail:]).all()
        if plain and ex.input_ids[0] >= V.base_size:  # a lead id, not the document's own first token
            opens[int(ex.input_ids[0])] = opens.get(int(ex.input_ids[0]), 0) + 1
    expected = max(opens, key=opens.__getitem__) if opens else V.eos
    assert text_lead(obj, V.eos) == expected
    assert (text_lead(obj, V.eos) == V.id("[S2S]")) == (spec in ("ul2", "ul2r"))


def test_same_seed_same_examples(vocab):
    obj = ul2(vocab)
    a = [obj(np.arange(50), np.random.default_rng(7)) for _ in range(3)]
    b = [obj(np.arange(50), np.random.default_rng(7)) for _ in range(3)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.input_ids, y.input_ids)
        np.testing.assert_array_equal(x.labels, y.labels)


@pytest.mark.parametrize("make,match", [
    (lambda v: MLM(v, rate=1.5), "rate"),
    (lambda v: MLM(v, mask_rate=0.95, random_rate=0.1), "mask_rate"),
    (lambda v: FIM(v, rate=-0.1), "rate"),
    (lambda v: FIM(v, spm_rate=2), "spm_rate"),
    (lambda v: FIM(v, line_rate=-1), "line_rate"),
    (lambda v: FIM(Vocab(10, specials=("<eos>",))), "fim_prefix"),
    (lambda v: MLM(Vocab(10, specials=("<eos>",))), "mask"),
    (lambda v: SpanCorruption(v, noise_density=1.2), "noise_density"),
    (lambda v: SpanCorruption(v, mean_span_length=0.5), "mean_span_length"),
    (lambda v: SpanCorruption(Vocab(10, num_sentinels=0)), "sentinel"),
    (lambda v: SpanCorruption(v, 0.5, 3.0, "[NLU]").max_tokens(1), "cannot hold"),
    (lambda v: Mixture([]), "at least one"),
    (lambda v: Mixture([(CLM(v.eos), -1.0)]), "weights"),
    (lambda v: build_objective("clm:x", v), "not a number"),
    (lambda v: build_objective("gpt", v), "unknown objective"),
    (lambda v: PrefixLM(v.eos, split=0), "split"),
])
def test_bad_configuration_raises(vocab, make, match):
    with pytest.raises(ValueError, match=match):
        make(vocab)


@settings(max_examples=20)
@given(docs, seeds)
def test_render_shows_every_position(doc, seed):
    ex = SpanCorruption(V)(doc, np.random.default_rng(seed))
    text = render_example(ex, V)
    assert len(text.splitlines()) == len(ex) + 2
    assert "<extra_id_0>" in text or len(doc) < 2
