"""Semantic-ID codebook: content embeddings, RQ-VAE training, refresh, health metrics, FM code embeddings."""
