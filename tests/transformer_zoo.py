"""A tiny Hugging Face-style BERT encoder (no transformers needed) and token batches for it.

The attention mask is built the way Hugging Face models build it, in one of three styles:

* ``"additive"``: ``(1.0 - mask[:, None, None, :]) * torch.finfo(float32).min`` added to the
  scores (``get_extended_attention_mask`` of transformers 4);
* ``"where"``: ``torch.where(mask.bool(), 0.0, finfo.min)`` added to the scores (transformers 5);
* ``"masked_fill"``: ``scores.masked_fill(mask == 0, -inf)``.

``outliers=True`` plants the known BERT outlier channels: a few residual-stream dimensions
that the FFN output linear drives to values ~50x the others.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MASK_STYLES = ("additive", "where", "masked_fill")


class Layer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, mask_style: str) -> None:
        super().__init__()
        self.heads, self.mask_style = heads, mask_style
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attn_out, self.attn_norm = nn.Linear(dim, dim), nn.LayerNorm(dim)
        self.ffn_in, self.ffn_out, self.ffn_norm = nn.Linear(dim, ffn), nn.Linear(ffn, dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5
        if self.mask_style == "additive":
            scores = scores + (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        elif self.mask_style == "where":
            scores = scores + torch.where(mask[:, None, None, :].bool(), 0.0, torch.finfo(x.dtype).min)
        else:
            scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = self.attn_norm(x + self.attn_out(context))
        return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


class TinyBert(nn.Module):
    """Embeddings + LayerNorm, ``layers`` post-norm encoder layers; returns the last hidden state."""

    def __init__(
        self,
        vocab: int = 50,
        dim: int = 32,
        heads: int = 4,
        ffn: int = 64,
        layers: int = 2,
        mask_style: str = "additive",
        outliers: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed, self.position = nn.Embedding(vocab, dim), nn.Embedding(64, dim)
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(Layer(dim, heads, ffn, mask_style) for _ in range(layers))
        if outliers:
            with torch.no_grad():
                for layer in self.layers:  # the FFN writes a large value into channels 3 and 7
                    layer.ffn_out.bias[[3, 7]] = 40.0
                    layer.ffn_norm.weight[[3, 7]] = 0.05

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.embed(ids) + self.position(positions))
        for layer in self.layers:
            x = layer(x, mask)
        return x


def token_batches(
    n: int, batch: int = 4, length: int = 12, vocab: int = 50, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of (token ids, attention mask) with padding: each row keeps 4..length tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (batch, length), generator=g)
        lengths = torch.randint(4, length + 1, (batch,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        out.append((ids * mask, mask))
    return out
