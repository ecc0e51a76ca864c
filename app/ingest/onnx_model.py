"""ONNX Runtime exports of the local models, made once offline and kept on disk.

A model is exported with `torch.onnx` from the weights it was loaded from, quantised to int8
weights where asked (dynamic quantisation of the matrix multiplications, one scale per output
channel: per-tensor scales lose too much of this model's accuracy), and kept under a folder
named after the model's files, so the next start reuses it. Needs the `onnx` extra
(`onnxruntime`, `onnx`); nothing here touches the network.

`OnnxSentenceEmbedder` runs a sentence-transformers model's transformer in ONNX Runtime and its
other modules (pooling, normalisation) in torch as loaded, so any pooling the model declares
is applied as sentence-transformers applies it.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


def exported(
    source: Path,
    folder: Path,
    export: Callable[[Path], None],
    *,
    int8: bool,
    reduce_range: bool = False,
) -> Path:
    """The ONNX file of the model loaded from `source`, under `folder`: `export(target)` writes
    it the first time, and its int8 quantisation is made the first time it is asked for.

    `reduce_range` quantises the weights to 7 bits, as ONNX Runtime advises for CPUs without
    int8 dot-product units (VNNI): their int8 kernels add pairs of products in 16 bits, which
    full-range weights can overflow (measured on such a CPU: cosine to float32 at least 0.984
    with 7 bits, 0.977 with 8)."""
    home = folder / fingerprint(source)
    name = "model_int8_per_channel_7bit.onnx" if reduce_range else "model_int8_per_channel.onnx"
    plain, quantised = home / "model.onnx", home / name
    if not plain.exists():
        home.mkdir(parents=True, exist_ok=True)
        partial = plain.with_suffix(".partial")
        export(partial)
        partial.replace(plain)
    if int8 and not quantised.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        partial = quantised.with_suffix(".partial")
        quantize_dynamic(
            str(plain),
            str(partial),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            # Shape inference cannot type every exported MatMul; they are all float32.
            extra_options={"DefaultTensorType": 1},
        )
        partial.replace(quantised)
    return quantised if int8 else plain


def session(file: Path, threads: int) -> Any:
    """An ONNX Runtime session on the CPU (`threads` 0: one per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Memory patterns pay off for fixed shapes; with a new (batch, tokens) shape nearly every
    # call they only add to the peak (1.7 GB instead of 2.4 GB embedding 512 passages).
    options.enable_mem_pattern = False
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def fingerprint(source: Path) -> str:
    """Names an export after the model's files (path, size, modification time)."""
    digest = hashlib.sha256(str(source).encode())
    for path in sorted(source.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(source)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class OnnxSentenceEmbedder:
    """Embeds texts with a sentence-transformers `model`, its transformer run by ONNX Runtime."""

    def __init__(self, model: Any, file: Path, threads: int):
        self._model = model
        self._tokenizer = model.tokenizer
        self._max_length = model.max_seq_length
        self._session = session(file, threads)
        self._inputs = [i.name for i in self._session.get_inputs()]

    def __call__(self, texts: Sequence[str], batch_size: int) -> Vectors:
        """Unit-length float32 rows in the order of `texts`; batches of similar lengths, so
        that padding costs little."""
        import torch

        order = np.argsort([-len(text) for text in texts], kind="stable")
        rows: list[Vectors] = [np.empty(0, np.float32)] * len(texts)
        for start in range(0, len(texts), batch_size):
            picked = order[start : start + batch_size]
            encoded = self._tokenizer(
                [texts[i] for i in picked],
                padding=True,
                truncation=True,
                max_length=self._max_length,
                return_tensors="np",
            )
            hidden = self._session.run(
                None, {name: encoded[name].astype(np.int64) for name in self._inputs}
            )[0]
            features: dict[str, Any] = {
                "token_embeddings": torch.from_numpy(hidden),
                "attention_mask": torch.from_numpy(encoded["attention_mask"]),
            }
            with torch.inference_mode():
                for module in list(self._model)[1:]:  # pooling, normalisation, ...
                    features = module(features)
            embedded = features["sentence_embedding"].float().numpy()
            for i, row in zip(picked, embedded, strict=True):
                rows[i] = row
        return np.stack(rows)


def exported_sentence_transformer(
    model: Any, source: Path, folder: Path, *, int8: bool, reduce_range: bool = False
) -> Path:
    """The ONNX file of the transformer of `model` (a sentence-transformers model loaded from
    `source`): token ids in, token embeddings out."""
    return exported(
        source,
        folder,
        lambda target: export_transformer(model, target),
        int8=int8,
        reduce_range=reduce_range,
    )


def export_transformer(model: Any, target: Path) -> None:
    """Exports the transformer of a sentence-transformers model: token ids in, token
    embeddings out."""
    import torch

    transformer = model[0].auto_model.eval()
    # Two texts of different lengths: traced with padding, the graph keeps the attention mask.
    sample = model.tokenizer(["a text", "a longer text than the first one"], padding=True,
                             return_tensors="pt")  # fmt: skip
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer  # a submodule: its weights are the graph's

        def forward(self, *inputs: Any) -> Any:
            return self.transformer(**dict(zip(names, inputs, strict=True))).last_hidden_state

    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter needs no extra package (the newer one needs onnxscript).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TokenEmbeddings().eval(),
            tuple(sample[name] for name in names),
            str(target),
            input_names=names,
            output_names=["token_embeddings"],
            dynamic_axes={**axes, "token_embeddings": {0: "batch", 1: "tokens"}},
            opset_version=17,
            dynamo=False,
        )
