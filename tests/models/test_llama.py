import dataclasses

import pytest
import torch

from nano.models.llama import (
    FLAVORS,
    ModelArgs,
    Transformer,
    analytic_num_params,
    apply_rope,
    flops_per_token,
    num_params,
    padded_vocab_size,
    rope_tables,
)

TINY = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, ffn_hidden_dim=160, max_seq_len=32)


def build(args: ModelArgs = TINY, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device="cpu")
    model.init_weights()
    return model


def test_output_shape_and_finite() -> None:
    logits = build()(torch.randint(0, 128, (3, 17)))
    assert logits.shape == (3, 17, 128)
    assert torch.isfinite(logits).all()


def test_forward_with_labels_is_the_cross_entropy_of_the_logits() -> None:
    """The loss path (nano.loss, never all logits at once) against the logits path, value and gradients."""
    tokens, labels = torch.randint(0, 128, (2, 2, 17), generator=torch.Generator().manual_seed(3)).unbind(0)
    via_logits, via_labels = build(), build()
    expected = torch.nn.functional.cross_entropy(via_logits(tokens).flatten(0, 1), labels.flatten())
    expected.backward()
    loss = via_labels(tokens, labels)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(via_logits.named_parameters(), via_labels.parameters()):
        # Summation order differs: relative to the largest entry, the gradients agree to ~1e-6.
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5 * float(a.grad.abs().max()), msg=name)


def test_causality() -> None:
    model = build()
    tokens = torch.randint(0, 128, (1, 20))
    changed = tokens.clone()
    changed[0, 12] = (tokens[0, 12] + 1) % 128
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    changed_per_position = (a[0, 12:] - b[0, 12:]).abs().amax(dim=-1)  # [S - 12]
    assert (changed_per_position > 1e-6).all()


def test_rope_dot_product_depends_only_on_relative_position() -> None:
    head_dim = 16
    rope = rope_tables(head_dim, 64, theta=10000.0)
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)

    def score(m: int, n: int) -> torch.Tensor:
        return (apply_rope(q, rope[:, m : m + 1]) * apply_rope(k, rope[:, n : n + 1])).sum()

    torch.testing.assert_close(score(5, 2), score(40, 37))
    torch.testing.assert_close(score(0, 0), (q * k).sum())
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_gqa_shapes() -> None:
    model = build()
    attn = model.layers["0"].attention
    assert attn.wq.weight.shape == (TINY.n_heads * TINY.head_dim, TINY.dim)
    assert attn.wk.weight.shape == (TINY.n_kv_heads * TINY.head_dim, TINY.dim)
    assert attn.wv.weight.shape == (TINY.n_kv_heads * TINY.head_dim, TINY.dim)
    assert model(torch.randint(0, 128, (2, 9))).shape == (2, 9, 128)


def test_tied_embeddings_share_storage_and_count_once() -> None:
    tied = build(dataclasses.replace(TINY, tie_embeddings=True))
    assert tied.output.weight.data_ptr() == tied.tok_embeddings.weight.data_ptr()
    assert num_params(tied) == analytic_num_params(tied.args)
    assert num_params(tied) == num_params(build()) - TINY.vocab_size * TINY.dim


def test_meta_init_materialises_rope_buffer() -> None:
    model = build()
    expected = rope_tables(TINY.head_dim, TINY.max_seq_len, TINY.rope_theta)
    torch.testing.assert_close(model.rope, expected)
    assert "rope" not in model.state_dict()
    norms = [model.norm] + [n for block in model.layers.values() for n in (block.attention_norm, block.ffn_norm)]
    assert all(torch.equal(n.weight, torch.ones(TINY.dim)) for n in norms)
    torch.testing.assert_close(model.output.weight.std().item(), TINY.dim**-0.5, rtol=0.1, atol=0.0)
    # The residual-output projections get the depth-scaled init.
    wo_std = model.layers["0"].attention.wo.weight.std().item()
    wq_std = model.layers["0"].attention.wq.weight.std().item()
    assert wo_std < wq_std / 1.5


def test_nano_1b_parameter_count_on_meta() -> None:
    args = dataclasses.replace(FLAVORS["nano_1b"], vocab_size=padded_vocab_size(32000 + 6))
    with torch.device("meta"):
        model = Transformer(args)
    assert all(p.is_meta for p in model.parameters())
    assert args.vocab_size == 32064
    assert num_params(model) == analytic_num_params(args)
    body = num_params(model, exclude_embeddings=True)
    assert 1.05e9 < body < 1.15e9  # the seed's "~1.1B"
    # Independent count: per block 4 d^2 (attention, multi-head) + 3 d f (SwiGLU) + 2 d (norms).
    d, f, layers, vocab = 2048, 5504, 22, 32064
    assert body == layers * (4 * d * d + 3 * d * f + 2 * d) + d
    assert num_params(model) == body + 2 * vocab * d


def test_flops_per_token_formula() -> None:
    args, seq = FLAVORS["nano_1b"], 2048
    d, f, layers, vocab = 2048, 5504, 22, 32000
    matmul_params = layers * (4 * d * d + 3 * d * f + 2 * d) + d + vocab * d  # everything but the lookup
    assert flops_per_token(args, seq) == 6 * matmul_params + 12 * layers * d * seq


@pytest.mark.parametrize(
    ("change", "field"),
    [({"dim": 65}, "dim"), ({"n_kv_heads": 3}, "n_kv_heads"), ({"n_layers": 0}, "n_layers"), ({"norm_eps": 0.0}, "norm_eps")],
)
def test_bad_args_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TINY, **change)


def test_matches_transformers_llama() -> None:
    """Same weights, same logits as Hugging Face LlamaForCausalLM: pins the architecture and the export names."""
    transformers = pytest.importorskip("transformers")
    model = build()
    hf_cfg = transformers.LlamaConfig(
        vocab_size=TINY.vocab_size, hidden_size=TINY.dim, intermediate_size=TINY.ffn_hidden_dim,
        num_hidden_layers=TINY.n_layers, num_attention_heads=TINY.n_heads, num_key_value_heads=TINY.n_kv_heads,
        rms_norm_eps=TINY.norm_eps, rope_theta=TINY.rope_theta, max_position_embeddings=TINY.max_seq_len,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    from nano.checkpoint.export import hf_name  # the export's one name table

    hf_state = {hf_name(key): value for key, value in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(hf_state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    tokens = torch.randint(0, TINY.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, rtol=1e-4, atol=1e-4)
