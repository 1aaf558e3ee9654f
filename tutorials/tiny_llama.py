"""A small Llama-style decoder, the text it learns from, and its training loop (shared by
``llm_8da4w.py`` and ``benchmarks/decoder_lm.py``).

* Model: RMSNorm, rotary position embeddings, SwiGLU feed-forward, grouped-query attention
  (fewer key/value heads than query heads) and a static key/value cache, so that one
  exported program serves both prefill (many tokens) and token-by-token decode:
  ``model(tokens[1, T], input_pos[T]) -> logits[1, T, vocab]`` writes the keys and values
  of positions ``input_pos`` into the cache and attends over everything cached so far.
  Called without ``input_pos`` (training) it is a plain causal decoder on a batch.
* Data: the Python standard library's own ``.py`` files (every Python install has them),
  byte-level tokens (vocabulary 256). Files are split into training and held-out sets by
  a hash of their path, so the held-out text is code the model never saw.
"""

from __future__ import annotations

import hashlib
import math
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 256
    dim: int = 512
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 2
    hidden_dim: int = 1536
    max_seq_len: int = 512
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(cfg: LlamaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair: two [max_seq_len, head_dim // 2] tables."""
    freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
    angles = torch.outer(torch.arange(cfg.max_seq_len).float(), freqs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of ``x`` [B, T, heads, head_dim] by the angles of their positions."""
    pairs = x.unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, head_dim // 2], broadcast over heads
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        cache = (1, cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim)
        self.register_buffer("k_cache", torch.zeros(cache), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache), persistent=False)

    def _grouped_attention(self, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention over the cache, each key/value head serving its group of query heads.

        The query heads of a group become extra query rows ([B, kv_heads, group * T, d]),
        so the cached keys and values are read in place, never copied per query head.
        """
        b, _, t, d = q.shape
        group = self.n_heads // self.n_kv_heads
        rows = q.contiguous().view(b, self.n_kv_heads, group * t, d)
        scores = rows @ self.k_cache.transpose(2, 3) * d**-0.5 + mask.repeat(group, 1)
        y = torch.softmax(scores, dim=-1) @ self.v_cache
        return y.unflatten(2, (group, t)).flatten(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: Optional[torch.Tensor],
        mask: Optional[torch.Tensor],
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = apply_rope(self.wq(x).view(b, t, self.n_heads, self.head_dim), cos, sin).transpose(1, 2)
        k = apply_rope(self.wk(x).view(b, t, self.n_kv_heads, self.head_dim), cos, sin).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if input_pos is None:  # training: causal attention within the batch
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # inference: write this step's keys/values into the cache, attend over the cache
            self.k_cache[:, :, input_pos] = k
            self.v_cache[:, :, input_pos] = v
            y = self._grouped_attention(q, mask)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attention_norm, self.attention = RMSNorm(cfg.dim, cfg.norm_eps), Attention(cfg)
        self.ffn_norm, self.feed_forward = RMSNorm(cfg.dim, cfg.norm_eps), FeedForward(cfg)

    def forward(self, x, cos, sin, input_pos, mask):
        x = x + self.attention(self.attention_norm(x), cos, sin, input_pos, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class TinyLlama(nn.Module):
    """``forward(tokens[B, T])`` for training; ``forward(tokens[1, T], input_pos[T])`` with the KV cache."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, input_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        if input_pos is None:
            positions = torch.arange(tokens.shape[1])
            mask = None
        else:
            positions = input_pos
            slots = torch.arange(self.cfg.max_seq_len)
            # [T, max_seq_len]: the token at position p sees cache slots 0..p
            mask = torch.where(slots[None, :] <= input_pos[:, None], 0.0, float("-inf"))
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, input_pos, mask)
        return self.output(self.norm(x))

    def reset_cache(self) -> None:
        for layer in self.layers:
            layer.attention.k_cache.zero_()
            layer.attention.v_cache.zero_()


# --- the text ---------------------------------------------------------------------------


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, tests and third-party packages excluded, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def _held_out(path: Path) -> bool:
    return hashlib.sha256(path.name.encode()).digest()[0] < 26  # about 10% of the files


def stdlib_text(held_out: bool, max_bytes: Optional[int] = None) -> torch.Tensor:
    """The training (or held-out) standard-library source, concatenated, as uint8 byte tokens:
    all of it, or the files up to ``max_bytes``."""
    chunks, total = [], 0
    for path in stdlib_files():
        if _held_out(path) != held_out:
            continue
        chunks.append(path.read_bytes())
        total += len(chunks[-1])
        if max_bytes is not None and total >= max_bytes:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:max_bytes]), dtype=torch.uint8)


def windows(tokens: torch.Tensor, length: int, count: int, seed: int) -> torch.Tensor:
    """``count`` random windows of ``length + 1`` tokens (inputs and next-token targets), as int64."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - length - 1, (count,), generator=g)
    return torch.stack([tokens[s : s + length + 1] for s in starts.tolist()]).long()


def eval_windows(tokens: torch.Tensor, length: int, count: int) -> Iterator[torch.Tensor]:
    """``count`` windows of ``length + 1`` tokens spread evenly over ``tokens``, as int64."""
    starts = torch.linspace(0, len(tokens) - length - 1, count).long()
    for s in starts.tolist():
        yield tokens[s : s + length + 1].long()


def train(
    model: TinyLlama,
    tokens: torch.Tensor,
    steps: int,
    batch: int,
    seq_len: int,
    lr: float = 2e-3,
    seed: int = 0,
    bf16: bool = False,
    progress: bool = False,
) -> list[float]:
    """AdamW with warm-up and cosine decay on random windows; the losses (nats per byte).

    ``bf16`` runs the forward pass under bfloat16 autocast (faster matmuls on CPUs that have
    them; the weights and the optimizer stay float32). ``progress`` shows a bar on stderr."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    losses: list[float] = []
    for step in tqdm(range(steps), desc="training", unit="step", disable=not progress, file=sys.stderr):
        w = windows(tokens, seq_len, batch, seed=seed * 100003 + step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def perplexity(run, tokens: torch.Tensor, length: int, count: int) -> float:
    """exp(mean next-byte cross-entropy) over ``count`` held-out windows.

    ``run(tokens[1, T], input_pos[T]) -> logits[1, T, V]`` is the model in inference form:
    an eager ``TinyLlama``, a converted graph or a loaded ``.pte``; each window is one
    prefill from position 0.
    """
    nll, n = 0.0, 0
    positions = torch.arange(length)
    with torch.no_grad():
        for w in eval_windows(tokens, length, count):
            logits = run(w[None, :-1], positions)
            nll += float(F.cross_entropy(logits[0].float(), w[1:], reduction="sum"))
            n += length
    return math.exp(nll / n)
