"""ONNX Runtime inference for the cross-encoder (`HYBRID_RERANK_BACKEND=onnx` or `onnx-int8`).

The sentence-transformers model is exported once with `torch.onnx`, optionally quantised to
int8 weights (dynamic quantisation of the matrix multiplications), and kept under
`$HYBRID_DATA_DIR/rerank-onnx/`, keyed by the model's files, so the next start reuses it.
Needs the `onnx` extra (`onnxruntime`, `onnx`); nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.float32]


class OnnxScorer:
    """Scores (query, passage) pairs with an ONNX Runtime session on the CPU."""

    def __init__(self, file: Path, tokenizer: Any, max_length: int, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per physical core
        self._session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
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
    folder = cache_dir / _fingerprint(source)
    plain, quantised = folder / "model.onnx", folder / "model_int8.onnx"
    if not plain.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _export(model, plain)
    if int8 and not quantised.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        partial = quantised.with_suffix(".partial")
        quantize_dynamic(str(plain), str(partial), weight_type=QuantType.QInt8)
        partial.replace(quantised)
    return quantised if int8 else plain


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
    partial = target.with_suffix(".partial")
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter needs no extra package (the newer one needs onnxscript).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.model.eval(),
            (),
            str(partial),
            kwargs={name: sample[name] for name in names},
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    partial.replace(target)


def _fingerprint(source: Path) -> str:
    """Names the export after the model's files (path, size, modification time)."""
    digest = hashlib.sha256(str(source).encode())
    for path in sorted(source.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(source)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
