"""Encode a dataset into the embedding cache.

Runs every unique text of the dataset through the frozen backbone once; every later command that reads the same
texts with the same backbone and max length reads them from the cache.
"""

from ..arguments import BackboneArguments, PairsArguments
from ..parsing import CommandParser


def make_parser() -> CommandParser:
    return CommandParser("embed", (PairsArguments, BackboneArguments), doc=__doc__)


def main(data: PairsArguments, backbone: BackboneArguments) -> None:
    from ...data import load_pairs
    from ...features import EmbeddingCache
    from ...runtime import load_backbone_model

    pairs = load_pairs(data.dataset, data.format, max_pairs=data.max_pairs, seed=data.seed)
    model, tokenizer = load_backbone_model(backbone.backbone, "sparse", None, data.seed)
    cache = EmbeddingCache(model, tokenizer, cache_dir=data.cache_dir, max_length=data.max_length)
    cache.pair_features(pairs)
    print(f"{len(pairs)} pairs cached in {cache.directory}")
