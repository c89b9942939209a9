"""Precomputed bases as one versioned artifact (safetensors, parquet, manifest.json), and their home on the Hub."""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "store": ["Artifact", "ArtifactWriter", "load_artifact", "read_manifest", "verify_artifact", "text_pool_identity"],
    "hub": ["pull_artifact", "push_artifact", "resolve_bases_source", "load_bases", "model_bases"],
    "card": ["dataset_card"],
})
