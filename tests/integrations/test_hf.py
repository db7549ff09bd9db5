"""HuggingFace: fused loss equals HF's own on tiny random models; Trainer runs; Auto round trip."""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

from headway.integrations.hf import (  # noqa: E402
    HeadwayConfig,
    HeadwayForCausalLM,
    ObjectiveCollator,
    register,
    use_fused_loss,
)
from headway.objectives import CLM, FIM, build_objective  # noqa: E402
from headway.types import Vocab  # noqa: E402


def tiny_llama(**kw):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, **kw)
    return LlamaForCausalLM(cfg)


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=64))


def tiny_gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    return Gemma2ForCausalLM(Gemma2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                          final_logit_softcapping=5.0))


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2, tiny_gemma2, tiny_qwen2])
def test_fused_loss_and_grads_equal_hf(make):
    ref, fused = make().eval(), make().eval()  # eval: no dropout, so both see the same function
    fused.load_state_dict(ref.state_dict())
    use_fused_loss(fused)
    V = ref.config.vocab_size
    ids = torch.randint(0, V, (2, 13))
    labels = ids.clone()
    labels[0, :4] = -100
    for n in (None, 17):
        a = ref(input_ids=ids, labels=labels, num_items_in_batch=n)
        b = fused(input_ids=ids, labels=labels, num_items_in_batch=n)
        assert b.logits is None
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-5)
        ga = torch.autograd.grad(a.loss, list(ref.parameters()), allow_unused=True)
        gb = torch.autograd.grad(b.loss, list(fused.parameters()), allow_unused=True)
        for x, y in zip(ga, gb):
            if x is not None:
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6)
    # shift_labels (aligned) equal the shifted labels
    aligned = torch.full_like(labels, -100)
    aligned[:, :-1] = labels[:, 1:]
    torch.testing.assert_close(fused(input_ids=ids, labels=labels, shift_labels=aligned).loss,
                               ref(input_ids=ids, labels=labels).loss, rtol=1e-5, atol=1e-5)
    # without labels: the original forward, logits unchanged
    torch.testing.assert_close(fused(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_trainer_with_fused_loss_and_headway_collator(tmp_path):
    model = use_fused_loss(tiny_llama())
    vocab = Vocab(base_size=100, num_sentinels=4)  # ids < 128: fits the tiny Llama
    rng = np.random.default_rng(0)
    pattern = np.arange(20) % 7
    data = [{"input_ids": np.concatenate([pattern, rng.integers(0, 7, 4)])} for _ in range(64)]
    collator = ObjectiveCollator(build_objective("clm:0.5,fim:0.5", vocab), pad_id=vocab.pad, seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=30,
                             learning_rate=3e-3, logging_steps=5, report_to=[], use_cpu=True, save_strategy="no",
                             remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] - 0.5


def test_collator_labels_are_consistent_for_trainer_counts():
    vocab = Vocab(base_size=50, num_sentinels=2)
    batch = ObjectiveCollator(CLM(vocab.eos), pad_id=vocab.pad)([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}])
    assert torch.equal(batch["labels"][:, 1:], batch["shift_labels"][:, :-1])
    assert (batch["labels"][:, 1:] != -100).sum() == 3 + 1 + 1 + 1  # every token plus each EOS
    with pytest.raises(ValueError, match="bidirectional prefix"):
        ObjectiveCollator(build_objective("prefix_lm", vocab), vocab.pad)([{"input_ids": list(range(10))}])
    fim = ObjectiveCollator(FIM(vocab, rate=1.0), vocab.pad)([{"input_ids": list(range(10))}])
    assert vocab.id("<fim_prefix>") in fim["input_ids"]


def test_a_document_longer_than_max_length_is_refused_or_truncated_only_when_asked():
    """No silent loss: by default a document that does not fit `max_length` is refused by name; with
    overflow="truncate" its first piece is used, cut between characters; one that fits is kept whole."""
    from headway.data.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    vocab = Vocab.from_tokenizer(tok, num_sentinels=2)
    objective = build_objective("clm:0.5,fim:0.5", vocab, (tok.encode, tok.decode))
    text = "déjà vu — ϕ " * 20  # multi-byte characters: a cut by length alone would split one
    doc = tok.encode(text)
    limit = objective.max_tokens(64)
    with pytest.raises(ValueError, match=rf"a document of {len(doc)} tokens does not fit max_length=64"):
        ObjectiveCollator(objective, vocab.pad, max_length=64)([{"input_ids": doc}])
    batch = ObjectiveCollator(objective, vocab.pad, max_length=64, overflow="truncate")([{"input_ids": doc}])
    assert batch["input_ids"].shape[1] <= 64 + 1
    kept = [i for i in batch["input_ids"][0].tolist() if i < vocab.base_size]
    assert 0 < len(kept) <= limit and "\ufffd" not in tok.decode(kept)
    short = doc[:limit]
    whole = ObjectiveCollator(build_objective("clm", vocab), vocab.pad, max_length=64)([{"input_ids": short}])
    assert whole["input_ids"][0, 1 : 1 + len(short)].tolist() == short
    with pytest.raises(ValueError, match="overflow"):
        ObjectiveCollator(objective, vocab.pad, max_length=64, overflow="drop")
    with pytest.raises(ValueError, match="max_length"):
        ObjectiveCollator(objective, vocab.pad, max_length=4)


@pytest.mark.parametrize("backbone", ["transformer", "gated_ssm"])
def test_headway_model_round_trips_through_auto_classes(tmp_path, backbone):
    register()
    torch.manual_seed(0)
    cfg = HeadwayConfig(base_vocab_size=61, num_sentinels=4, backbone=backbone, size="tiny")
    model = HeadwayForCausalLM(cfg).eval()
    assert model.lm.head.table is model.lm.embedding  # tied split by split
    prompt = torch.tensor([[3, 4, 5]])
    want = model.generate(prompt, max_new_tokens=6, do_sample=False)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, HeadwayForCausalLM)
    assert loaded.lm.head.table is loaded.lm.embedding
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.equal(loaded.generate(prompt, max_new_tokens=6, do_sample=False), want)
    # the loss through the fused head equals cross-entropy on its own logits
    ids = torch.randint(0, 60, (2, 9))
    out = loaded(input_ids=ids, labels=ids)
    logits = loaded(input_ids=ids).logits
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone", ["transformer", "gated_ssm"])
def test_masked_lm_sees_right_context_and_never_padding(backbone):
    from headway.integrations.hf import HeadwayForMaskedLM

    torch.manual_seed(0)
    # zero_init=False: the recipe's zero-initialized output projections make every position independent
    # of every other one until trained, which would hide the attention pattern this test looks at
    model = HeadwayForMaskedLM(HeadwayConfig(base_vocab_size=61, num_sentinels=4, backbone=backbone,
                                             size="tiny", zero_init=False)).eval()
    ids = torch.randint(0, 60, (2, 10))
    base = model(input_ids=ids).logits
    later = ids.clone()
    later[:, 7] = (later[:, 7] + 1) % 60
    # position 0 depends on a later token: bidirectional, as MLM needs
    assert (model(input_ids=later).logits[:, 0] - base[:, 0]).abs().max() > 1e-4
    # with the last 3 positions padded, changing them changes nothing before them
    mask = torch.ones_like(ids)
    mask[:, 7:] = 0
    a = model(input_ids=ids, attention_mask=mask).logits
    b = model(input_ids=later, attention_mask=mask).logits
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)


def tiny_bert(kind):
    from transformers import BertConfig, BertForMaskedLM, BertLMHeadModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                     is_decoder=kind == "lmhead")
    return (BertForMaskedLM if kind == "mlm" else BertLMHeadModel)(cfg)


def tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(vocab_size=97, d_model=32, d_ff=64, num_layers=1, num_heads=4,
                                               d_kv=8))


@pytest.mark.parametrize("make", [lambda: tiny_bert("mlm"), lambda: tiny_bert("lmhead"), tiny_t5],
                         ids=["BertForMaskedLM", "BertLMHeadModel", "T5"])
def test_use_fused_loss_refuses_models_whose_loss_it_would_change(make):
    with pytest.raises(ValueError, match="supported"):
        use_fused_loss(make())


def tiny_scaled(kind):
    """Models whose logits are lm_head(h) times (or divided by) a config factor."""
    torch.manual_seed(0)
    common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)
    if kind == "granite":
        from transformers import GraniteConfig, GraniteForCausalLM

        return GraniteForCausalLM(GraniteConfig(logits_scaling=4.0, **common))
    if kind == "cohere":
        from transformers import CohereConfig, CohereForCausalLM

        return CohereForCausalLM(CohereConfig(logit_scale=0.25, **common))
    from transformers import FalconH1Config, FalconH1ForCausalLM

    return FalconH1ForCausalLM(FalconH1Config(lm_head_multiplier=3.0, mamba_d_ssm=32, mamba_n_heads=4,
                                              mamba_d_head=8, mamba_d_state=8, mamba_chunk_size=4, **common))


@pytest.mark.parametrize("kind", ["granite", "cohere", "falcon_h1"])
def test_fused_loss_applies_output_scales(kind):
    ref, fused = tiny_scaled(kind).eval(), tiny_scaled(kind).eval()
    fused.load_state_dict(ref.state_dict())
    use_fused_loss(fused)
    ids = torch.randint(0, 128, (2, 9))
    a, b = ref(input_ids=ids, labels=ids).loss, fused(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("leaky", [False, True])
def test_trainer_callback_refuses_a_leaking_model_at_train_start(tmp_path, leaky):
    from transformers import BertConfig, BertLMHeadModel

    from headway.integrations.hf import CausalityCallback

    torch.manual_seed(0)
    if leaky:  # a BERT LM head without is_decoder: bidirectional attention under a shifted-label loss
        model = BertLMHeadModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                           num_attention_heads=4, intermediate_size=64))
    else:
        model = use_fused_loss(tiny_llama())
    data = [{"input_ids": list(range(i % 7, i % 7 + 12))} for i in range(16)]
    collator = ObjectiveCollator(CLM(99), pad_id=98)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to=[],
                             use_cpu=True, save_strategy="no", remove_unused_columns=False, disable_tqdm=True)
    cb = CausalityCallback()
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator, callbacks=[cb])
    if leaky:
        with pytest.raises(ValueError, match="refusing to train BertLMHeadModel.*NOT causal"):
            trainer.train()
        assert trainer.state.global_step == 0
    else:
        trainer.train()
        assert cb.report.ok and trainer.state.global_step == 2


def test_use_fused_loss_takes_loss_options():
    """options= gives the keyword shortcut's loss, adds label smoothing on request, keeps the model's own
    softcap (and refuses another), and refuses a keyword that disagrees with the options."""
    from headway.loss import LossOptions, linear_cross_entropy

    ids = torch.randint(0, 128, (2, 9))
    by_kw = use_fused_loss(tiny_llama().eval(), z_loss=1e-3, chunk_size=5)
    by_opt = use_fused_loss(tiny_llama().eval(), options=LossOptions(z_loss=1e-3, chunk_size=5))
    assert torch.equal(by_kw(input_ids=ids, labels=ids).loss, by_opt(input_ids=ids, labels=ids).loss)
    o = LossOptions(label_smoothing=0.1, impl="reference")
    model = use_fused_loss(tiny_gemma2().eval(), options=o)
    ref = tiny_gemma2().eval()
    h = ref.model(input_ids=ids)[0]
    want = linear_cross_entropy(h, ref.lm_head.weight, ids, shift=True, label_smoothing=0.1, softcap=5.0)
    torch.testing.assert_close(model(input_ids=ids, labels=ids).loss, want, rtol=1e-5, atol=1e-6)
    assert use_fused_loss(tiny_gemma2().eval(), options=LossOptions(softcap=5.0)) is not None  # the model's own
    with pytest.raises(ValueError, match=r"options.softcap=3.0, but Gemma2ForCausalLM's logits are soft-capped at 5.0"):
        use_fused_loss(tiny_gemma2(), options=LossOptions(softcap=3.0))
    with pytest.raises(ValueError, match="not soft-capped"):
        use_fused_loss(tiny_llama(), options=LossOptions(softcap=3.0))
    with pytest.raises(ValueError, match=r"use_fused_loss: z_loss=0.01 and options.z_loss=0.0 disagree"):
        use_fused_loss(tiny_llama(), z_loss=1e-2, options=o)


def test_headway_config_carries_the_recipe_and_loss_options_and_old_configs_load_as_before(tmp_path):
    """A new HeadwayConfig defaults to headway.RECIPE's transformer (what `headway train` trains) and
    saves every recipe and loss field; a config saved before those fields existed (no `activation`)
    still builds the plain GELU transformer it was built with."""
    import json

    import headway as hw
    from headway.loss import LossOptions

    register()
    new = HeadwayConfig(base_vocab_size=61, num_sentinels=4, size="tiny")
    assert (new.activation, new.qk_norm, new.zero_init) == (hw.RECIPE.activation, hw.RECIPE.qk_norm,
                                                           hw.RECIPE.zero_init)
    assert new.loss_options() == LossOptions()
    cfg = HeadwayConfig(base_vocab_size=61, num_sentinels=4, size="tiny", z_loss=1e-3, label_smoothing=0.1,
                        chunk_size=16, loss_impl="chunked")
    model = HeadwayForCausalLM(cfg)
    assert model.lm.head.loss_options == LossOptions(z_loss=1e-3, label_smoothing=0.1, chunk_size=16, impl="chunked")
    tc = model.lm.backbone.config
    assert (tc.activation, tc.qk_norm, tc.zero_init) == ("relu2", True, True)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("activation", "qk_norm", "zero_init", "z_loss", "label_smoothing", "softcap", "ignore_index",
                "chunk_size", "loss_impl"):
        assert key in saved, key
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.lm.head.loss_options == model.lm.head.loss_options
    assert again.lm.backbone.config == model.lm.backbone.config
    # a 0.1.0 config: none of the recipe or new loss keys
    old = {k: v for k, v in saved.items() if k not in ("activation", "qk_norm", "zero_init", "label_smoothing",
                                                       "softcap", "ignore_index", "chunk_size", "loss_impl")}
    (tmp_path / "config.json").write_text(json.dumps(old))
    for loaded in (HeadwayConfig.from_dict(dict(old)), HeadwayConfig.from_pretrained(tmp_path),
                   HeadwayConfig.from_json_file(tmp_path / "config.json")):
        assert (loaded.activation, loaded.qk_norm, loaded.zero_init) == ("gelu", False, False)
        assert loaded.loss_options() == LossOptions(z_loss=1e-3)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).lm
    assert (plain.backbone.config.activation, plain.backbone.config.qk_norm, plain.backbone.config.zero_init) == (
        "gelu", False, False)
    ssm = HeadwayForCausalLM(HeadwayConfig(base_vocab_size=61, num_sentinels=4, backbone="gated_ssm", size="tiny"))
    assert ssm.lm.head.loss_options == LossOptions()  # the recipe fields do not apply to the gated SSM
    with pytest.raises(ValueError, match="LossOptions: `label_smoothing` must be a number in"):
        HeadwayConfig(label_smoothing=2.0)
