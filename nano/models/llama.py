"""Native LLaMA: token embedding, RoPE, RMSNorm, SwiGLU, (grouped-query) attention via SDPA.

RoPE layout: the Hugging Face "rotate_half" layout (the first and second halves of each head dimension
form the rotation pairs), computed with real cos/sin tables, so `transformers.LlamaForCausalLM` can load
the weights without permuting wq/wk, and no complex tensors meet tensor parallel or torch.compile.

The model imports nothing from torch.distributed: parallelism is applied from outside (nano/parallel).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nano.loss import linear_cross_entropy


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    ffn_hidden_dim: int
    n_kv_heads: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        positive = ("dim", "n_layers", "n_heads", "vocab_size", "ffn_hidden_dim", "max_seq_len", "norm_eps",
                    "rope_theta", "init_std")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelArgs.{name} must be > 0, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"ModelArgs.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"ModelArgs.dim / n_heads = {self.head_dim} must be even for RoPE")
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"ModelArgs.n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


# vocab_size here is a placeholder: the trainer sets it from the tokenizer (padded, see padded_vocab_size).
FLAVORS: dict[str, ModelArgs] = {
    "debug": ModelArgs(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, ffn_hidden_dim=688, vocab_size=8192, max_seq_len=256),
    "nano_1b": ModelArgs(dim=2048, n_layers=22, n_heads=16, ffn_hidden_dim=5504, vocab_size=32000, max_seq_len=2048),
}


def padded_vocab_size(n_tokens: int, multiple: int = 64) -> int:
    """Round the vocabulary up: embedding/output matmuls whose size is a multiple of 64 map onto tensor cores
    without ragged tiles (nanoGPT measured ~25% on the output layer); the spare rows are never targets."""
    return math.ceil(n_tokens / multiple) * multiple


# ---------------------------------------------------------------------------------------------------------
# RoPE


def rope_tables(head_dim: int, seq_len: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """cos and sin of position x frequency, stacked: [2, seq_len, head_dim] (each half repeated)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)  # [S, D/2]
    angles = torch.cat([angles, angles], dim=-1)  # [S, D]
    return torch.stack([angles.cos(), angles.sin()])


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, S, H, D] by position; rope is [2, S, D] from rope_tables."""
    cos, sin = rope[0][None, :, None, :], rope[1][None, :, None, :]  # [1, S, 1, D]
    return (x.float() * cos + rotate_half(x.float()) * sin).type_as(x)


# ---------------------------------------------------------------------------------------------------------
# Initialisation

Place = Callable[[torch.Tensor, torch.Tensor], None]  # (parameter, its full value) -> this process's part copied in


def copy_whole(param: torch.Tensor, full: torch.Tensor) -> None:
    """`Place` for an unsharded parameter."""
    param.copy_(full)


class ParamInit:
    """Draws each parameter in full on the CPU from a generator of its own, seeded by (seed, the parameter's
    state-dict name), and lets `place` copy this process's part into it.

    So the weights depend on the seed alone: one process, FSDP, HSDP and tensor parallel start from the same
    model, bit for bit, on CPU and on CUDA (drawing per shard makes the model depend on the layout). One
    parameter at a time: the largest temporary is one full tensor (nano_1b: the 32K x 2048 embedding,
    262 MB), never the model. Truncated normals resample the few values beyond 3 std (torch's
    trunc_normal_ inverts the CDF: 16 against 148 million values per second on one CPU core).
    """

    def __init__(self, model: nn.Module, seed: int, place: Place) -> None:
        self.seed, self.place = seed, place
        self.names: dict[int, str] = {}
        for name, param in model.state_dict(keep_vars=True).items():  # names without wrapper prefixes
            self.names.setdefault(id(param), name)

    def generator(self, param: torch.Tensor) -> torch.Generator:
        name = self.names[id(param)]
        digest = hashlib.blake2b(f"{self.seed}/{name}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)

    def normal(self, param: torch.Tensor, std: float) -> None:
        full = torch.randn(param.shape, generator=self.generator(param))
        self.place(param, full.mul_(std).to(param.dtype))

    def trunc_normal(self, param: torch.Tensor, std: float) -> None:
        """N(0, std) truncated at +-3 std."""
        generator = self.generator(param)
        full = torch.randn(param.shape, generator=generator)
        flat = full.view(-1)
        outside = (flat.abs() > 3).nonzero().squeeze(1)
        while outside.numel():
            flat[outside] = torch.randn(outside.numel(), generator=generator)
            outside = outside[flat[outside].abs() > 3]
        self.place(param, full.mul_(std).to(param.dtype))


# ---------------------------------------------------------------------------------------------------------
# Blocks


class KVCache:
    """One attention layer's keys and values of the tokens seen so far, for generation: each new token then
    costs one position's attention instead of recomputing the whole prefix. Not a module, not in the state dict."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0  # positions filled
        self.keys: torch.Tensor | None = None  # [B, Hkv, max_len, D], allocated on first use
        self.values: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v [B, Hkv, S, D]; returns the keys and values of every position so far."""
        if self.keys is None or self.values is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.keys, self.values = k.new_zeros(shape), v.new_zeros(shape)
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, {end} needed")
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        bsz, seq_len, _ = x.shape
        # Head counts come from the projected shapes, so column-sharded (tensor-parallel) wq/wk/wv just work.
        q = self.wq(x).view(bsz, seq_len, -1, self.head_dim)  # [B, S, H, D]
        k = self.wk(x).view(bsz, seq_len, -1, self.head_dim)  # [B, S, Hkv, D]
        v = self.wv(x).view(bsz, seq_len, -1, self.head_dim)  # [B, S, Hkv, D]
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
        past = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.update(k, v)  # [B, Hkv, past + S, D]
        # Query i sits at position past + i: it sees keys 0 .. past + i.
        mask = None if past == 0 else torch.ones(seq_len, past + seq_len, dtype=torch.bool, device=x.device).tril(past)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                             enable_gqa=k.shape[1] != q.shape[1])
        return self.wo(out.transpose(1, 2).reshape(bsz, seq_len, -1))  # [B, S, H*D] -> [B, S, dim]

    def init_weights(self, init: ParamInit, std: float, out_std: float) -> None:
        for linear in (self.wq, self.wk, self.wv):
            init.trunc_normal(linear.weight, std)
        init.trunc_normal(self.wo.weight, out_std)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))

    def init_weights(self, init: ParamInit, std: float, out_std: float) -> None:
        for linear in (self.w1, self.w3):
            init.trunc_normal(linear.weight, std)
        init.trunc_normal(self.w2.weight, out_std)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        # cache as a keyword: tensor-parallel plans lay out the positional inputs only
        x = x + self.attention(self.attention_norm(x), rope, cache=cache)
        return x + self.feed_forward(self.ffn_norm(x))

    def init_weights(self, init: ParamInit, std: float, out_std: float) -> None:
        self.attention_norm.reset_parameters()
        self.ffn_norm.reset_parameters()
        self.attention.init_weights(init, std, out_std)
        self.feed_forward.init_weights(init, std, out_std)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # A ModuleDict keeps block names ("0", "1", ...) stable when a block gets wrapped or removed.
        self.layers = nn.ModuleDict({str(i): TransformerBlock(args) for i in range(args.n_layers)})
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # Not persistent: derived from the args, so checkpoints hold weights only.
        self.register_buffer("rope", rope_tables(args.head_dim, args.max_seq_len, args.rope_theta), persistent=False)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                cache: list[KVCache] | None = None, z_loss: float = 0.0) -> torch.Tensor:
        """tokens [B, S] -> logits [B, S, vocab]; with labels [B, S], their mean cross-entropy instead.

        The loss is computed here, inside the one forward call, so that whatever wraps the model (FSDP's
        all-gather of the head, autocast) covers it, and through nano.loss so the logits never exist in full.
        With `cache` (one KVCache per layer, see `new_cache`), tokens continue the sequence the cache holds.
        `z_loss` > 0 adds that weight times the mean squared log-partition of the logits (training.z_loss).
        """
        start = 0 if cache is None else cache[0].length
        seq_len = tokens.shape[1]
        if start + seq_len > self.args.max_seq_len:
            raise ValueError(f"sequence of {start + seq_len} tokens exceeds max_seq_len {self.args.max_seq_len}")
        h = self.tok_embeddings(tokens)  # [B, S, dim]
        rope = self.rope[:, start : start + seq_len]
        for index, layer in enumerate(self.layers.values()):
            h = layer(h, rope, cache=None if cache is None else cache[index])
        h = self.norm(h)
        if labels is None:
            return self.output(h)
        return linear_cross_entropy(h, self.output, labels, z_loss=z_loss)

    def new_cache(self, max_len: int | None = None) -> list[KVCache]:
        """Empty KV caches, one per layer, for up to `max_len` positions (default: the model's context)."""
        return [KVCache(min(max_len or self.args.max_seq_len, self.args.max_seq_len)) for _ in self.layers]

    @torch.no_grad()
    def init_weights(self, buffer_device: torch.device | None = None, *, seed: int = 0,
                     place: Place | None = None) -> None:
        """Materialise every parameter and buffer (after `to_empty`); the same seed gives the same weights
        under any sharding (see ParamInit; `place` copies a full tensor into a sharded parameter).

        Embeddings: N(0, init_std); input projections: the same, truncated at 3 std. Each block's output
        projections (wo, w2) add into the residual stream 2 x n_layers times, so their std is divided by
        sqrt(2 * n_layers) to keep the residual variance independent of depth (GPT-2 / OLMo). The output
        head uses dim**-0.5 so the initial logits have unit scale and the first loss is close to ln(vocab).
        """
        args = self.args
        device = buffer_device or self.rope.device
        self.rope = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta, device=device)
        if args.tie_embeddings:  # to_empty() gives each module its own new tensor, breaking the tie
            self.output.weight = self.tok_embeddings.weight
        init = ParamInit(self, seed, place or copy_whole)
        std, out_std = args.init_std, args.init_std / math.sqrt(2 * args.n_layers)
        init.normal(self.tok_embeddings.weight, std)
        for layer in self.layers.values():
            layer.init_weights(init, std, out_std)
        self.norm.reset_parameters()
        if not args.tie_embeddings:
            init.trunc_normal(self.output.weight, args.dim**-0.5)


# ---------------------------------------------------------------------------------------------------------
# Attention kernel


def sdpa_backend(args: ModelArgs, seq_len: int, dtype: torch.dtype, device: torch.device) -> str:
    """The kernel `F.scaled_dot_product_attention` dispatches to for this model on a CUDA device, reported by
    the benchmarks: the math fallback materialises the S x S scores and is several times slower.

    Follows PyTorch's default priority (flash, memory-efficient, math, then cuDNN only if math is disabled).
    """
    if device.type != "cuda":
        return f"{device.type} (fused flash kernel when the inputs allow)"
    cuda = torch.backends.cuda
    q = torch.empty(1, args.n_heads, seq_len, args.head_dim, dtype=dtype, device=device)  # [B, H, S, D]
    kv = torch.empty(1, args.kv_heads, seq_len, args.head_dim, dtype=dtype, device=device)
    params = cuda.SDPAParams(q, kv, kv, None, 0.0, True, args.kv_heads != args.n_heads)
    candidates = [
        ("flash", cuda.flash_sdp_enabled, cuda.can_use_flash_attention),
        ("memory-efficient", cuda.mem_efficient_sdp_enabled, cuda.can_use_efficient_attention),
        ("math", cuda.math_sdp_enabled, lambda _: True),
        ("cudnn", cuda.cudnn_sdp_enabled, cuda.can_use_cudnn_attention),
    ]
    for name, enabled, usable in candidates:
        if enabled() and usable(params):
            return name
    return "none enabled"


# ---------------------------------------------------------------------------------------------------------
# Size and cost


def num_params(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Parameter count (tied weights once); works on the meta device.

    `exclude_embeddings` leaves out the token embedding and the output head (the "non-embedding" count
    that scaling laws use and that the ~1.1B of nano_1b refers to).
    """
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied matrix once
    if exclude_embeddings:
        total -= sum({id(p): p.numel() for p in (model.tok_embeddings.weight, model.output.weight)}.values())
    return total


def analytic_num_params(args: ModelArgs) -> int:
    """Closed form of the parameter count, for checking the module and for estimates."""
    attention = args.dim * args.head_dim * (2 * args.n_heads + 2 * args.kv_heads)
    ffn = 3 * args.dim * args.ffn_hidden_dim
    block = attention + ffn + 2 * args.dim
    embeddings = args.vocab_size * args.dim * (1 if args.tie_embeddings else 2)
    return args.n_layers * block + embeddings + args.dim


def flops_per_token(args: ModelArgs, seq_len: int) -> int:
    """Training FLOPs per token: 6 N + 12 L d S (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, App. B).

    N counts every matmul weight (all parameters but the token embedding lookup, head included); the second
    term is the attention score and value matmuls, forward and backward.
    """
    matmul_params = analytic_num_params(args) - args.vocab_size * args.dim
    if args.tie_embeddings:
        matmul_params += args.vocab_size * args.dim
    return 6 * matmul_params + 12 * args.n_layers * args.dim * seq_len
