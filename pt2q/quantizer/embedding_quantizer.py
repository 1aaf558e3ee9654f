"""torchao's ``quantizer.embedding_quantizer`` path (a compatibility mirror): the quantizer lives in
:mod:`pt2q.quantizers.embedding`."""

from pt2q.quantizers.embedding import EmbeddingQuantizer, get_embedding_operators_config

__all__ = ["get_embedding_operators_config", "EmbeddingQuantizer"]
