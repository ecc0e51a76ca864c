"""Re-embedding a collection while it is searched.

    python benchmarks/reembed.py ../shared/data/scifact [--documents 2000] [--model M]

Over a throwaway embedded PostgreSQL, the first `--documents` records of the set are ingested
directly (timed: the baseline chunks/s, the embedding cache emptied first), then one
`hybrid worker` process re-embeds the collection with `--model` (default: the bundled model
in bfloat16, `local/all-MiniLM-L6-v2+bf16`; a CPU without bfloat16 units refuses it) while
this process searches it (hybrid, k = 10, `SEARCHES_PER_S` a second, the set's queries in
turn with vectors computed beforehand, so that every search times the same work).

Reports:
- the re-embedding's chunks/s against the direct ingest's, and its wall time;
- search p50/p95 idle (30 s before) and during the re-embedding;
- how many searches made before the switch returned exactly what the same search returned
  before the re-embedding started (all of them should);
- how long the switch held the collection's writes (the worker's `writes_held_ms`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

SEARCHES_PER_S = 10
COLLECTION = "searched"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--model", default="local/all-MiniLM-L6-v2+bf16")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="hybrid-reembed-bench-"))
    os.environ.update(
        HYBRID_DATA_DIR=str(data_dir), HYBRID_AUTH="off", HYBRID_LOG_FORMAT="json",
        HYBRID_LOG_LEVEL="INFO", HYBRID_WORKER_POLL_INTERVAL="0.5",
    )  # fmt: skip
    os.environ.pop("DATABASE_URL", None)
    from app.db import embedded

    try:
        print(_run(args.dataset, args.documents, args.model, data_dir))
    finally:
        embedded.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def _run(dataset: Path, count: int, model: str, data_dir: Path) -> str:
    from sqlalchemy import text

    from app import collections
    from app.db import embedded
    from app.eval.metrics import percentile
    from app.ingest import load
    from app.jobs import records
    from app.jobs.submit import submit_reembed
    from app.search.engine import search
    from app.search.request import SearchRequest
    from app.service import Services
    from app.settings import load_settings

    url, _ = embedded.start(data_dir)
    os.environ["DATABASE_URL"] = url
    services = Services.open(load_settings())
    with (dataset / "corpus.jsonl").open() as corpus:
        lines = list(islice(corpus, count))
    docs = load.load_bytes(
        "".join(lines).encode(), "corpus.jsonl", max_bytes=1 << 30, max_chars=10_000_000
    )
    services.ingestor.embedder.embed(["warm up"])
    started = time.perf_counter()
    report = services.ingestor.ingest(COLLECTION, docs, create=True)
    ingest_s = time.perf_counter() - started
    ingest_rate = report.chunks / ingest_s
    print(f"ingested {report.chunks} chunks in {ingest_s:.0f} s", file=sys.stderr)

    queries = [json.loads(q)["text"] for q in (dataset / "queries.jsonl").open()][:300]
    vectors = [v.tolist() for v in services.ingestor.embedder.embed(queries)]
    searcher = services.searcher(rerank=False)
    paced = {"next": time.monotonic()}

    def one(i: int) -> tuple[float, list[int], int]:
        """One paced search: ms, its chunk ids, and the vector version it surely saw (0 when
        the collection switched during it)."""
        paced["next"] += 1 / SEARCHES_PER_S
        time.sleep(max(paced["next"] - time.monotonic(), 0))
        request = SearchRequest(query=queries[i % len(queries)], vector=vectors[i % len(queries)])
        started = time.perf_counter()
        with services.transaction() as conn:
            version = collections.get(conn, COLLECTION).vectors_version
            result = search(conn, COLLECTION, request, searcher)
        took = (time.perf_counter() - started) * 1000
        with services.engine.connect() as conn:
            after = collections.get(conn, COLLECTION).vectors_version
        return took, [h.chunk_id for h in result.hits], version if version == after else 0

    baseline = {i: one(i)[1] for i in range(len(queries))}
    idle: list[float] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        idle.append(one(len(idle))[0])

    log_path = data_dir / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [str(Path(sys.executable).with_name("hybrid")), "worker"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    time.sleep(20)  # its model loads
    job = submit_reembed(services, COLLECTION, model, None, key=None)
    busy: list[float] = []
    same = compared = 0
    paced["next"] = time.monotonic()
    try:
        while True:
            i = len(idle) + len(busy)
            took, ids, version = one(i)
            busy.append(took)
            if version == 1:
                compared += 1
                same += ids == baseline[i % len(queries)]
            if len(busy) % SEARCHES_PER_S == 0:
                with services.transaction() as conn:
                    current = records.get(conn, job.id)
                if current.finished:
                    break
    finally:
        worker.terminate()
        worker.wait(60)
    assert current.state == "done", current
    took_s = (current.finished_at - current.started_at).total_seconds()  # type: ignore[operator]
    held = _held_ms(log_path)
    with services.engine.connect() as conn:
        chunks = conn.execute(text("SELECT count(*) FROM chunks")).scalar_one()
    services.close()
    rate = current.chunks / took_s
    out = [
        f"machine: {os.cpu_count()} cores; {count} documents ({chunks} chunks), "
        f"re-embedded with {model}",
        "",
        "| | chunks/s | wall time s |",
        "|---|---|---|",
        f"| direct ingest (bundled model, fp32) | {ingest_rate:.1f} | {ingest_s:.0f} |",
        f"| re-embedding job (1 worker) | {rate:.1f} | {took_s:.0f} |",
        "",
        f"| search (hybrid, k = 10, {SEARCHES_PER_S}/s) | searches | p50 ms | p95 ms |",
        "|---|---|---|---|",
    ]
    for name, values in (("idle", idle), ("during the re-embedding", busy)):
        out.append(
            f"| {name} | {len(values)} | {percentile(values, 50):.1f} | "
            f"{percentile(values, 95):.1f} |"
        )
    out += [
        "",
        f"searches before the switch identical to the same search before the re-embedding: "
        f"{same} of {compared}",
        f"writes held by the switch: {held} ms",
    ]
    return "\n".join(out)


def _held_ms(log_path: Path) -> Any:
    for line in log_path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "collection switched to its next model":
            return event.get("writes_held_ms")
    return None


if __name__ == "__main__":
    main()
