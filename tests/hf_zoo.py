"""Hugging Face ``transformers`` model classes, built from small configs with random weights (nothing downloaded).

Each :class:`Arch` builds the library's own model class (``BertModel``, ``LlamaModel``,
``SwinModel``, ...) from a tiny config, re-draws its weights with scales that keep
activations alive through the depth (HF's init, normal(0, 0.02), makes a random deep
net's outputs vanish, and SQNR on a near-zero signal says nothing), and wraps it so
that it takes tensors and returns one tensor (the last hidden state or the logits).

    arch = ARCHITECTURES["bert"]
    model, batches = arch.build()          # batches[0] is the export example
    out = model(*batches[0])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["Arch", "ARCHITECTURES", "CI_SUBSET", "reinit_", "text_batches", "image_batches", "audio_batches"]

Batch = tuple[torch.Tensor, ...]

VOCAB, SEQ, BATCH = 96, 16, 2
HIDDEN, HEADS, FFN, LAYERS = 32, 4, 64, 2
IMAGE = 32


def _fan_in(module: nn.Module, weight: torch.Tensor) -> int:
    if type(module).__name__ == "Conv1D":  # GPT-2's transposed linear: weight is (in, out)
        return weight.shape[0]
    return math.prod(weight.shape[1:])


def reinit_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every weight so activations keep their scale through the depth.

    Linear/conv weights N(0, 1/fan_in), embedding tables N(0, 1), biases N(0, 0.1^2),
    norm weights 1 + N(0, 0.1^2); anything else (class tokens, position tables, layer
    scales, weight-norm factors) N(0, 0.5^2).
    """
    g = torch.Generator().manual_seed(seed)
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, nn.Embedding):
                    std, mean = 1.0, 0.0
                elif name == "weight" and (isinstance(module, layers) or type(module).__name__ == "Conv1D"):
                    std, mean = 1.0 / math.sqrt(_fan_in(module, p)), 0.0
                elif name == "bias":
                    std, mean = 0.1, 0.0
                elif name == "weight":  # LayerNorm, RMSNorm, BatchNorm, GroupNorm
                    std, mean = 0.1, 1.0
                else:
                    std, mean = 0.5, 0.0
                p.copy_(mean + torch.randn(p.shape, generator=g) * std)
    return model.eval()


def text_batches(n: int, seed: int = 0, mask: bool = True) -> list[Batch]:
    """``n`` (token ids, attention mask) batches with right padding (every row keeps at least 6 tokens)."""
    g = torch.Generator().manual_seed(seed)
    out: list[Batch] = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=g)
        lengths = torch.randint(6, SEQ + 1, (BATCH,), generator=g)
        lengths[0] = SEQ
        attention = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
        out.append((ids, attention) if mask else (ids,))
    return out


def image_batches(n: int, seed: int = 0, size: int = IMAGE) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, size, size, generator=g),) for _ in range(n)]


def audio_batches(n: int, seed: int = 0, samples: int = 4000) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, samples, generator=g),) for _ in range(n)]


def mel_batches(n: int, seed: int = 0, mels: int = 16, frames: int = 64) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, mels, frames, generator=g),) for _ in range(n)]


class FirstOutput(nn.Module):
    """Call a HF model with positional tensors (named ``inputs``) and return its first output tensor."""

    def __init__(self, model: nn.Module, inputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.inputs = model, inputs

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.inputs, args)), return_dict=True)
        return out[0]


@dataclasses.dataclass(frozen=True)
class Arch:
    """One architecture: its family, how to build the HF model, and its input batches."""

    name: str
    family: str  # encoder | decoder | vision | audio
    make: Callable[[], nn.Module]  # the bare HF model (random weights)
    inputs: tuple[str, ...]
    batches: Callable[[int, int], list[Batch]]

    def build(self, n: int = 4, seed: int = 0) -> tuple[nn.Module, list[Batch]]:
        """The wrapped model (re-initialised, eval) and ``n`` batches (the first is the export example)."""
        torch.manual_seed(seed)
        model = FirstOutput(reinit_(self.make(), seed), self.inputs).eval()
        return model, self.batches(n, seed)


def _text(**common: Any) -> dict[str, Any]:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=64,
    )
    base.update(common)
    return base


def _bert_like(config_cls: str, model_cls: str, **extra: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        config = getattr(transformers, config_cls)(**_text(**extra))
        return getattr(transformers, model_cls)(config)

    return make


def _hf(model_cls: str, config_cls: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs))

    return make


def _decoder(config_cls: str, model_cls: str, **extra: Any) -> Callable[[], nn.Module]:
    kwargs = _text(num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra)
    return _hf(model_cls, config_cls, use_cache=False, **kwargs)


def _t5_encoder() -> nn.Module:
    import transformers

    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=FFN, num_layers=LAYERS, num_heads=HEADS, use_cache=False
    )
    return transformers.T5EncoderModel(config)


def _whisper_encoder() -> nn.Module:
    import transformers

    config = transformers.WhisperConfig(
        num_mel_bins=16,
        d_model=HIDDEN,
        encoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_layers=1,
        decoder_attention_heads=HEADS,
        decoder_ffn_dim=FFN,
        max_source_positions=32,
        vocab_size=VOCAB,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    return transformers.WhisperModel(config).get_encoder()


def _wav2vec2() -> nn.Module:
    import transformers

    config = transformers.Wav2Vec2Config(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
    )
    return transformers.Wav2Vec2Model(config)


_VIT = dict(
    image_size=IMAGE,
    patch_size=8,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=FFN,
)


def _text_arch(name: str, make: Callable[[], nn.Module], family: str = "encoder", mask: bool = True) -> Arch:
    inputs = ("input_ids", "attention_mask") if mask else ("input_ids",)
    return Arch(name, family, make, inputs, lambda n, seed: text_batches(n, seed, mask))


def _image_arch(name: str, make: Callable[[], nn.Module], size: int = IMAGE) -> Arch:
    return Arch(name, "vision", make, ("pixel_values",), lambda n, seed: image_batches(n, seed, size))


_ARCHS = [
    # encoders
    _text_arch("bert", _bert_like("BertConfig", "BertModel")),
    _text_arch("roberta", _bert_like("RobertaConfig", "RobertaModel", pad_token_id=1)),
    _text_arch("xlm_roberta", _bert_like("XLMRobertaConfig", "XLMRobertaModel", pad_token_id=1)),
    _text_arch("electra", _bert_like("ElectraConfig", "ElectraModel", embedding_size=HIDDEN)),
    _text_arch("albert", _bert_like("AlbertConfig", "AlbertModel", embedding_size=16)),
    _text_arch(
        "distilbert",
        _hf(
            "DistilBertModel",
            "DistilBertConfig",
            vocab_size=VOCAB,
            dim=HIDDEN,
            n_layers=LAYERS,
            n_heads=HEADS,
            hidden_dim=FFN,
            max_position_embeddings=64,
        ),
    ),
    _text_arch("deberta", _bert_like("DebertaConfig", "DebertaModel")),
    _text_arch(
        "deberta_v2",
        _bert_like(
            "DebertaV2Config",
            "DebertaV2Model",
            relative_attention=True,
            position_buckets=8,
            pos_att_type=["p2c", "c2p"],
        ),
    ),
    _text_arch("mpnet", _bert_like("MPNetConfig", "MPNetModel")),
    _text_arch("t5_encoder", _t5_encoder),
    # decoders
    _text_arch(
        "gpt2",
        _hf(
            "GPT2Model",
            "GPT2Config",
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=2,
            use_cache=False,
        ),
        "decoder",
    ),
    _text_arch(
        "opt",
        _hf(
            "OPTModel",
            "OPTConfig",
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            ffn_dim=FFN,
            max_position_embeddings=64,
            word_embed_proj_dim=HIDDEN,
            use_cache=False,
        ),
        "decoder",
    ),
    _text_arch("llama", _decoder("LlamaConfig", "LlamaModel"), "decoder"),
    _text_arch("mistral", _decoder("MistralConfig", "MistralModel"), "decoder"),
    _text_arch("qwen2", _decoder("Qwen2Config", "Qwen2Model"), "decoder"),
    _text_arch("phi", _decoder("PhiConfig", "PhiModel"), "decoder"),
    _text_arch("phi3", _decoder("Phi3Config", "Phi3Model"), "decoder"),
    _text_arch("gemma", _decoder("GemmaConfig", "GemmaModel", head_dim=8), "decoder"),
    # vision
    _image_arch("vit", _hf("ViTModel", "ViTConfig", **_VIT)),
    _image_arch("deit", _hf("DeiTModel", "DeiTConfig", **_VIT)),
    _image_arch(
        "convnext",
        _hf("ConvNextModel", "ConvNextConfig", num_channels=3, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1]),
        IMAGE * 2,
    ),
    _image_arch(
        "resnet",
        _hf(
            "ResNetModel",
            "ResNetConfig",
            embedding_size=16,
            hidden_sizes=[16, 32, 48, 64],
            depths=[1, 1, 1, 1],
            layer_type="basic",
        ),
        IMAGE * 2,
    ),
    _image_arch(
        "mobilenet_v2",
        _hf("MobileNetV2Model", "MobileNetV2Config", depth_multiplier=0.35, image_size=IMAGE * 2),
        IMAGE * 2,
    ),
    _image_arch(
        "efficientnet",
        _hf(
            "EfficientNetModel",
            "EfficientNetConfig",
            width_coefficient=0.25,
            depth_coefficient=0.25,
            image_size=IMAGE * 2,
            hidden_dim=320,
        ),
        IMAGE * 2,
    ),
    _image_arch(
        "mobilevit",
        _hf(
            "MobileViTModel",
            "MobileViTConfig",
            image_size=IMAGE,
            hidden_sizes=[16, 24, 32],
            neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
            num_attention_heads=2,
            expand_ratio=2.0,
        ),
    ),
    _image_arch(
        "swin",
        _hf(
            "SwinModel",
            "SwinConfig",
            image_size=IMAGE,
            patch_size=2,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=4,
        ),
    ),
    _image_arch(
        "segformer",
        _hf(
            "SegformerModel",
            "SegformerConfig",
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[16, 32],
            num_attention_heads=[1, 2],
            patch_sizes=[7, 3],
            strides=[4, 2],
            mlp_ratios=[2, 2],
        ),
    ),
    # audio
    Arch("whisper_encoder", "audio", _whisper_encoder, ("input_features",), mel_batches),
    Arch("wav2vec2", "audio", _wav2vec2, ("input_values",), audio_batches),
]

ARCHITECTURES: dict[str, Arch] = {a.name: a for a in _ARCHS}

# One per family, each a model a fix was made for (ResNet: the plain CNN path): what CI lowers to a .pte and runs.
CI_SUBSET = ("t5_encoder", "gpt2", "resnet", "wav2vec2")
