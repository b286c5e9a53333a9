"""The embedding index on disk: embeddings stored once, searched exactly or approximately.

``format`` (the folder: files committed by one JSON manifest), ``segment`` (embedding rows
written once, read back checked), ``writer`` (create, add, remove in one atomic commit),
``embedding_index`` (:class:`EmbeddingIndex`: search, duplicates, match), ``blocked`` (exact
search and close pairs in bounded memory), ``ann`` (approximate search with faiss), ``build``
(the index of a cache under a fitted model, kept up to date).
"""

from tripletsk._lazy import lazy_getattr, public_names

_LAZY = public_names(
    {
        "tripletsk.index.embedding_index": ["EmbeddingIndex", "Matches"],
        "tripletsk.index.build": [
            "BuildReport",
            "build_index_from_features",
            "build_index_from_model",
            "check_index_current",
        ],
    }
)

__all__ = [*_LAZY]
__getattr__ = lazy_getattr(__name__, _LAZY)
