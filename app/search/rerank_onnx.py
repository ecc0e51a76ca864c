"""ONNX Runtime inference for the cross-encoder (`HYBRID_RERANK_BACKEND=onnx` or `onnx-int8`).

The sentence-transformers model is exported once with `torch.onnx`, optionally quantised to
int8 weights (dynamic quantisation of the matrix multiplications), and kept under
`$HYBRID_DATA_DIR/rerank-onnx/`, keyed by the model's files, so the next start reuses it.
Needs the `onnx` extra (`onnxruntime`, `onnx`); nothing here touches the network.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from app.ingest.embed import cpu_has_int8
from app.ingest.onnx_model import exported, session

Scores = npt.NDArray[np.float32]


class OnnxScorer:
    """Scores (query, passage) pairs with an ONNX Runtime session on the CPU."""

    def __init__(self, file: Path, tokenizer: Any, max_length: int, threads: int) -> None:
        self._session = session(file, threads)
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._tokenizer = tokenizer
        self._max_length = max_length

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> Scores:
        encoded = self._tokenizer(
            [q for q, _ in pairs],
            [p for _, p in pairs],
            padding=True,
            truncation=True,
            max_length=self._max_length,
            return_tensors="np",
        )
        feeds = {name: encoded[name].astype(np.int64) for name in self._inputs}
        logits = self._session.run(None, feeds)[0]
        return np.asarray(logits, dtype=np.float32).reshape(len(pairs), -1)[:, 0]


def exported_model(model: Any, source: Path, cache_dir: Path, *, int8: bool) -> Path:
    """The ONNX file of `model` (a sentence-transformers CrossEncoder loaded from `source`),
    exported and quantised on first use."""
    return exported(
        source,
        cache_dir,
        lambda target: _export(model, target),
        int8=int8,
        reduce_range=int8 and not cpu_has_int8(),
    )


def _export(model: Any, target: Path) -> None:
    import torch

    # Two pairs of different lengths: traced with padding, the graph keeps the attention
    # mask (with none to apply, the model would leave it out).
    sample = model.tokenizer(
        ["query", "a longer query"],
        ["a passage", "a much longer passage than the first one"],
        padding=True,
        return_tensors="pt",
    )
    # The exporter numbers graph inputs in the order of `forward`'s parameters.
    names = [n for n in inspect.signature(model.model.forward).parameters if n in sample]
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter needs no extra package (the newer one needs onnxscript).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.model.eval(),
            (),
            str(target),
            kwargs={name: sample[name] for name in names},
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
