"""The bundled embedder's precisions: ingest speed, memory, query embedding time and quality.

    python benchmarks/embedder.py ../shared/data/scifact ../shared/data/nfcorpus-pre ...
        [--precisions fp32,bf16,int8] [--out FILE]

For each precision (`HYBRID_EMBEDDING_PRECISION`), in a process of its own (so that its peak
memory is its own) over a throwaway embedded PostgreSQL (so that no vector is shared through
the embedding cache): every set is ingested end to end through the normal write path (load →
chunk → embed → store) and timed, then evaluated as `hybrid eval` does (vector and hybrid
modes). Reports per precision and set: chunks/s, the process's peak RSS, query embedding
p50/p95 (every judged query, embedded one at a time), and nDCG@10 of both modes; and the
ratio of each precision's chunks/s to fp32's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", type=Path)
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one precision
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_measure(args.one, args.sets)))
        return
    results: dict[str, list[dict[str, Any]]] = {}
    for precision in args.precisions.split(","):
        print(f"measuring {precision} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--one", precision, *map(str, args.sets)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        results[precision] = json.loads(done.stdout.strip().splitlines()[-1])
    report = _report(results)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


def _measure(precision: str, sets: list[Path]) -> list[dict[str, Any]]:
    from sqlalchemy import text

    from app.eval import runner
    from app.eval.metrics import percentile
    from app.service import Services
    from app.settings import load_settings

    data = Path(tempfile.mkdtemp(prefix="hybrid-embedder-bench-"))
    environ = {**os.environ, "HYBRID_DATA_DIR": str(data), "HYBRID_EMBEDDING_PRECISION": precision}
    environ.pop("DATABASE_URL", None)
    rows = []
    try:
        services = Services.open(load_settings(environ))
        try:
            services.embedder.embed(["warm up"])
            for folder in sets:
                dataset = runner.read_dataset(folder)
                collection = runner.collection_name(dataset.name)
                started = time.perf_counter()
                runner.ingest(services, dataset, collection, progress=False)
                seconds = time.perf_counter() - started
                with services.engine.connect() as conn:
                    chunks = conn.execute(
                        text(
                            "SELECT count(*) FROM chunks c JOIN collections k "
                            "ON k.id = c.collection_id WHERE k.name = :name"
                        ),
                        {"name": collection},
                    ).scalar_one()
                embed_ms = []
                for question in dataset.queries.values():
                    begun = time.perf_counter()
                    services.embedder.embed([question])
                    embed_ms.append((time.perf_counter() - begun) * 1000)
                report = runner.evaluate(
                    services, folder, modes=["vector", "hybrid"], progress=False
                )
                rows.append(
                    {
                        "set": dataset.name,
                        "chunks": chunks,
                        "chunks_per_s": chunks / seconds,
                        "embed_p50_ms": percentile(embed_ms, 50),
                        "embed_p95_ms": percentile(embed_ms, 95),
                        "ndcg": {m.mode: m.ndcg_10 for m in report.modes},
                        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    }
                )
                print(f"{precision} {dataset.name}: {rows[-1]}", file=sys.stderr, flush=True)
        finally:
            services.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return rows


def _report(results: dict[str, list[dict[str, Any]]]) -> str:
    base = {row["set"]: row for row in results.get("fp32", [])}
    lines = [
        "| precision | set | chunks | chunks/s | vs fp32 | peak RSS MB | query embed p50 / p95 ms "
        "| nDCG@10 vector | nDCG@10 hybrid |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for precision, rows in results.items():
        for row in rows:
            ratio = row["chunks_per_s"] / base[row["set"]]["chunks_per_s"] if base else 1.0
            lines.append(
                f"| {precision} | {row['set']} | {row['chunks']} | {row['chunks_per_s']:.1f} | "
                f"{ratio:.2f}x | {row['peak_rss_mb']:.0f} | "
                f"{row['embed_p50_ms']:.1f} / {row['embed_p95_ms']:.1f} | "
                f"{row['ndcg']['vector']:.4f} | {row['ndcg']['hybrid']:.4f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
