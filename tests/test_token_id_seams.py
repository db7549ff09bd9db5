"""The tokenizer, the `Vocab` and the model are tied: every public path that takes token ids refuses an
id it cannot take, by name and before any work, instead of training on a silently different text
(a corpus id read as <eos>, <pad>, <mask> or a sentinel) or failing deep inside torch."""

import numpy as np
import pytest
import torch

from headway.data.packing import examples_from_documents
from headway.data.tokenizer import BPETokenizer, ByteTokenizer
from headway.models import build_model
from headway.objectives import (
    CLM,
    FIM,
    MLM,
    SINGLE,
    PrefixLM,
    SpanCorruption,
    build_objective,
    sentinels_for,
    ul2,
    vocab_for,
)
from headway.types import Batch, Vocab

V = Vocab(50, num_sentinels=4)
RNG = np.random.default_rng(0)


def _enc(text: str) -> list[int]:  # a codec over ids 0..49 for character-level FIM
    return [ord(c) % 50 for c in text]


def _dec(ids: list[int]) -> str:
    return "".join(chr(48 + i) for i in ids)


OBJECTIVES = {
    **{f"build_objective({n!r})": (lambda n=n: build_objective(n, V)) for n in SINGLE},
    "build_objective('clm:0.5,fim:0.5', codec)": lambda: build_objective("clm:0.5,fim:0.5", V, (_enc, _dec)),
    "CLM(vocab)": lambda: CLM(V),
    "CLM(eos id)": lambda: CLM(V.eos),
    "PrefixLM(vocab)": lambda: PrefixLM(V),
    "FIM(token-level)": lambda: FIM(V, rate=1.0),
    "FIM(character-level)": lambda: FIM(V, rate=1.0, encode=_enc, decode=_dec),
    "MLM": lambda: MLM(V),
    "SpanCorruption": lambda: SpanCorruption(V),
    "ul2(vocab)": lambda: ul2(V),
}


@pytest.mark.parametrize("bad", [V.base_size, V.eos, V.pad, V.size - 1, V.size + 7, -1])
@pytest.mark.parametrize("make", list(OBJECTIVES.values()), ids=list(OBJECTIVES))
def test_every_objective_refuses_ids_outside_the_base_vocabulary(make, bad):
    objective = make()
    doc = np.arange(20) % V.base_size
    doc[11] = bad
    with pytest.raises(ValueError, match=r"base vocabulary \[0, 50\).*position 11"):
        objective(doc, np.random.default_rng(0))
    ok = np.arange(20) % V.base_size  # the same document without the bad id is taken
    assert len(objective(ok, np.random.default_rng(0))) > 0


def test_the_chunking_path_and_the_collator_refuse_before_any_work():
    doc = np.array([1, 2, V.base_size + 3, 4])
    with pytest.raises(ValueError, match="base vocabulary"):
        list(examples_from_documents([doc], build_objective("clm:0.5,fim:0.5", V), 16, RNG))
    from headway.integrations.hf import ObjectiveCollator

    with pytest.raises(ValueError, match="base vocabulary"):
        ObjectiveCollator(build_objective("clm", V), pad_id=V.pad)([{"input_ids": [1, 2]}, {"input_ids": doc}])


def test_a_vocab_built_from_the_tokenizer_takes_all_its_ids_and_a_smaller_one_is_refused():
    texts = ["def f(x):\n    return x * 2  # ϕ → λ\n" * 3, "class A:\n    pass\n" * 4]
    bpe = BPETokenizer.train(texts * 20, 300, progress=False)
    doc = np.concatenate([np.asarray(bpe.encode(t)) for t in texts])
    assert doc.max() >= 256  # the ids a Vocab(256) would have read as specials
    with pytest.raises(ValueError, match="Vocab.from_tokenizer"):
        build_objective("clm", Vocab(256))(doc, RNG)
    vocab = Vocab.from_tokenizer(bpe)
    assert vocab.base_size == bpe.base_size
    ex = build_objective("clm", vocab)(doc, RNG)
    assert not vocab.is_special(ex.input_ids[1:]).any()  # the corpus stays text
    assert Vocab.from_tokenizer(ByteTokenizer()).base_size == 256
    from tokenizers import Tokenizer

    assert Vocab.from_tokenizer(bpe.tok).base_size == bpe.tok.get_vocab_size()
    assert isinstance(bpe.tok, Tokenizer)
    with pytest.raises(ValueError, match="cannot tell the vocabulary size"):
        Vocab.from_tokenizer(object())


def _batch(ids: torch.Tensor) -> Batch:
    B, S = ids.shape
    return Batch(ids, ids.clone(), torch.arange(S).expand(B, S).clone(), torch.zeros(B, S, dtype=torch.long),
                 torch.zeros(B, 1, dtype=torch.long))


@pytest.mark.parametrize("backbone", ["transformer", "gated_ssm"])
@pytest.mark.parametrize("bad", [V.size, V.size + 100, -1])
def test_models_take_ids_below_vocab_size_only(backbone, bad):
    model = build_model(V, backbone, "tiny")
    assert model.vocab_size == V.size
    ids = torch.randint(0, V.size, (2, 9))
    model(_batch(ids))  # every id of the Vocab is taken
    ids[1, 4] = bad
    with pytest.raises(ValueError, match=rf"input_ids.*\[0, {V.size}\)"):
        model(_batch(ids))
    with pytest.raises(ValueError, match="input_ids"):
        model.logits(ids)
    if backbone == "transformer":
        with pytest.raises(ValueError, match="prompt"):
            model.generate(ids[1], 2)


def test_a_model_built_for_another_vocab_is_refused():
    model = build_model(Vocab(50, num_sentinels=1), "transformer", "tiny")
    for other in (Vocab(50, num_sentinels=4), Vocab(48, num_sentinels=3), Vocab(40)):  # bigger, same size, smaller
        with pytest.raises(ValueError, match="splits .* are not the model's"):
            model.infill(torch.tensor([1, 2]), torch.tensor([3]), other, max_new_tokens=2)
    model.infill(torch.tensor([1, 2]), torch.tensor([3]), Vocab(50, num_sentinels=1), max_new_tokens=2)


def test_the_hf_recipe_resizes_or_refuses_a_model_smaller_than_the_vocab():
    transformers = pytest.importorskip("transformers")
    from headway.integrations.hf import ObjectiveCollator, fit_vocab, use_fused_loss

    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = use_fused_loss(transformers.LlamaForCausalLM(cfg))
    batch = ObjectiveCollator(build_objective("clm:0.5,fim:0.5", V), pad_id=V.pad)(
        [{"input_ids": list(range(1, 30))}, {"input_ids": [5, 6, 7]}])
    with pytest.raises(ValueError, match=r"input_ids.*\[0, 40\)"):  # <eos> etc. are past its 40 rows
        model(**batch)
    with pytest.raises(ValueError, match="pass resize=True"):
        fit_vocab(model, V, resize=False)
    fit_vocab(model, V)
    assert model.get_input_embeddings().weight.shape[0] == V.size
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("spec", ["span", "ul2", "ul2r", "ul2_decoder", "clm:0.5,ul2:0.5"])
@pytest.mark.parametrize("row_length", [8, 64, 255, 806, 1024, 2048, 3001])
def test_sentinels_sized_to_the_row_fill_rows_exactly_or_leave_one_or_two_free(spec, row_length):
    """With `vocab_for(tokenizer, spec, S)`, every span denoiser's longest example fills a row of S
    tokens exactly or leaves 1-2 positions free, at any S (100 sentinels stop doing so from S=806)."""
    vocab = vocab_for(ByteTokenizer(), spec, row_length)
    assert vocab.num_sentinels == sentinels_for(spec, row_length) >= 100
    build_objective(spec, vocab, row_length=row_length)  # enough sentinels: accepted
    from headway.objectives import _span_members

    for m in _span_members(build_objective(spec, vocab)):
        n = m.max_tokens(row_length)
        assert row_length - m.example_length(n) <= 2, (m.name, n, m.example_length(n))
        ex = m(np.arange(n) % 256, np.random.default_rng(1))
        assert len(ex) == m.example_length(n)
    if row_length >= 806 and "ul2" in spec:
        with pytest.raises(ValueError, match=r"needs \d+ sentinels"):
            build_objective(spec, Vocab(256), row_length=row_length)


def test_sentinels_stay_100_below_806_tokens_per_row():
    assert [sentinels_for("ul2", S) for S in (64, 256, 805)] == [100, 100, 100]
    assert sentinels_for("ul2", 806) > 100 and sentinels_for("ul2", 2048) == 256
    assert sentinels_for("clm:0.5,fim:0.5", 1 << 16) == 100  # no span denoiser: no sentinels needed beyond T5's


def _entry_points() -> dict:
    """Every public entry point that takes token ids, as name -> call(bad_id) that must raise ValueError
    (a document id outside the base vocabulary, or a model id outside [0, vocab.size))."""
    doc = lambda bad: np.array([1, 2, bad, 4])  # noqa: E731
    model = build_model(V, "transformer", "tiny")
    ssm = build_model(V, "gated_ssm", "tiny")
    ids = lambda bad: torch.tensor([[1, 2, bad, 4]])  # noqa: E731
    points = {name: (lambda bad, make=make: make()(doc(bad), np.random.default_rng(0)))
              for name, make in OBJECTIVES.items()}
    points["examples_from_documents"] = lambda bad: list(
        examples_from_documents([doc(bad)], build_objective("clm:0.5,fim:0.5", V, (_enc, _dec)), 16, RNG))
    points["LanguageModel.forward (transformer)"] = lambda bad: model(_batch(ids(bad)))
    points["LanguageModel.forward (gated_ssm)"] = lambda bad: ssm(_batch(ids(bad)))
    points["LanguageModel.logits"] = lambda bad: model.logits(ids(bad))
    points["LanguageModel.hidden"] = lambda bad: model.hidden(ids(bad))
    points["LanguageModel.generate"] = lambda bad: model.generate(ids(bad)[0], 1)
    points["LanguageModel.infill"] = lambda bad: model.infill(ids(bad)[0], torch.tensor([3]), V, max_new_tokens=1)
    return points


ENTRY_POINTS = _entry_points()


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_every_id_taking_entry_point_refuses_an_id_it_cannot_take(name):
    """Document entry points (objectives, chunking) refuse ids at or above base_size; model entry points
    refuse ids at or above vocab.size; both refuse negative ids — a ValueError naming the ids."""
    takes_documents = name not in {k for k in ENTRY_POINTS if k.startswith("LanguageModel")}
    too_big = V.base_size if takes_documents else V.size
    for bad in (too_big, too_big + 13, -1):
        with pytest.raises(ValueError, match=r"\[0, \d+\)"):
            ENTRY_POINTS[name](bad)


@pytest.mark.parametrize("collate_via", ["ObjectiveCollator", "use_fused_loss forward"])
def test_the_hf_entry_points_refuse_ids_they_cannot_take(collate_via):
    transformers = pytest.importorskip("transformers")
    from headway.integrations.hf import ObjectiveCollator, use_fused_loss

    if collate_via == "ObjectiveCollator":
        for bad in (V.base_size, -1):
            with pytest.raises(ValueError, match="base vocabulary"):
                ObjectiveCollator(build_objective("clm", V), pad_id=V.pad)([{"input_ids": [1, bad, 3]}])
        return
    cfg = transformers.LlamaConfig(vocab_size=V.size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = use_fused_loss(transformers.LlamaForCausalLM(cfg))
    for bad in (V.size, -1):
        ids = torch.tensor([[1, 2, bad, 4]])
        with pytest.raises(ValueError, match="input_ids"):
            model(input_ids=ids, labels=torch.tensor([[1, 2, 3, 4]]))
        with pytest.raises(ValueError, match="labels"):
            model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=ids)
