"""Model cards, the alphabet/tokenization policy and scoring backends.

This package knows nothing about Ray, benchmarks or files: it turns sequences into log-likelihoods.
Heavy imports (torch, transformers, vllm) happen inside the backend modules, so importing ``models``
is cheap.
"""

from glmscore.models.errors import GlmscoreError

__all__ = ["GlmscoreError"]
