"""What a switchable feature costs a search: throughput and p50 with it on and off, in one run.

    python benchmarks/overhead.py --feature query-log|metrics|access-log [--seconds 6]
        [--rounds 7] [--concurrency 4] [--aa] [--out FILE]

Starts two `hybrid serve` processes over one embedded PostgreSQL (a fresh data directory with
the sample corpus), identical but for the feature: `query-log` is `HYBRID_QUERY_LOG=redacted`
(the default) against `off`; `metrics` is `HYBRID_METRICS` on against off; `access-log` is
`HYBRID_ACCESS_LOG` on against off (`--aa`: both servers with the feature off, to see the
method's own noise). Each round measures one server, then the other (the order alternates),
in two phases of `--seconds` each: throughput with `--concurrency` closed-loop workers (the
server saturated), then latency with one (what a caller waits when the server is not
queueing requests). Two mixes:

- `cached`: a dozen sample questions over and over, answered from the result cache after the
  warm-up: the cheapest search there is, where any per-request cost weighs the most;
- `unique`: every query new, so the whole read path runs (query embedding, SQL).

Reports per mix the medians over rounds of each server's searches per second and p50, and
the medians of the paired per-round ratio (throughput) and difference (p50), and the query
log's counters (written, dropped, failed) from `/metrics` at the end. Run it on a quiet
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

QUESTIONS = [
    "how does rank fusion work", "what is bm25", "why chunk documents", "access control",
    "approximate nearest neighbours", "embeddings of text", "evaluation of search",
    "what is hybrid search", "how are chunks sized", "which documents may a user see",
    "what does recall mean", "hnsw graph",
]  # fmt: skip


# The setting that switches each feature, and its values on and off.
FEATURES = {
    "query-log": ("HYBRID_QUERY_LOG", "redacted", "off"),
    "metrics": ("HYBRID_METRICS", "true", "false"),
    "access-log": ("HYBRID_ACCESS_LOG", "true", "false"),
}


def main() -> None:
    args = _arguments()
    setting, on, off = FEATURES[args.feature]
    data = Path(tempfile.mkdtemp(prefix="hybrid-overhead-bench-"))
    servers: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    try:
        servers["on"] = _serve(data, {setting: off if args.aa else on}, "--sample")
        url = _run("db", "url", env={"HYBRID_DATA_DIR": str(data)}).strip()
        second = {setting: off, "DATABASE_URL": url, "HYBRID_FAISS_DIR": str(data / "faiss-off")}
        servers["off"] = _serve(data, second)
        key = (data / "admin.key").read_text().strip()
        results = asyncio.run(_measure({n: u for n, (u, _) in servers.items()}, key, args))
        counters = _counters(servers["on"][0], key)
    finally:
        for _, process in reversed(list(servers.values())):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        shutil.rmtree(data, ignore_errors=True)
    report = _report(results, counters, args)
    print("\n" + report)
    if args.out:
        args.out.write_text(report + "\n")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feature", choices=sorted(FEATURES), required=True)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--aa", action="store_true", help="both servers with the feature off")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def _hybrid() -> str:
    beside = Path(sys.executable).parent / "hybrid"
    return str(beside) if beside.exists() else shutil.which("hybrid") or "hybrid"


def _environment(data: Path, extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "HYBRID_DATA_DIR": str(data), **extra}


def _run(*command: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [_hybrid(), *command], env={**os.environ, **env}, capture_output=True, check=True
    )
    return done.stdout.decode()


def _serve(data: Path, env: dict[str, str], *flags: str) -> tuple[str, subprocess.Popen[bytes]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (data / f"serve-{port}.log").open("wb")
    process = subprocess.Popen(
        [_hybrid(), "serve", "--port", str(port), *flags], env=_environment(data, env),
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                print(f"ready: {url} ({env})", flush=True)
                return url, process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"server exited: see {log.name}")
        time.sleep(0.5)
    raise SystemExit("server did not become ready")


async def _measure(
    urls: dict[str, str], key: str, args: argparse.Namespace
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """mix -> server -> [(searches per second, p50 ms) per round]."""
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    unique = itertools.count()
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        for url in urls.values():  # warm-up: models, caches, connections
            await _load(client, url, lambda: QUESTIONS[next(unique) % len(QUESTIONS)], 4, 3.0)
        for mix in ("cached", "unique"):
            results[mix] = {name: [] for name in urls}
            for round_ in range(args.rounds):
                order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
                for name in order:
                    if mix == "cached":

                        def query() -> str:
                            return QUESTIONS[next(unique) % len(QUESTIONS)]
                    else:

                        def query() -> str:
                            return f"{QUESTIONS[next(unique) % len(QUESTIONS)]} {next(unique)}"

                    rate, _ = await _load(client, urls[name], query, args.concurrency, args.seconds)
                    _, p50 = await _load(client, urls[name], query, 1, args.seconds)
                    results[mix][name].append((rate, p50))
                    print(f"{mix} round {round_ + 1} {name}: {rate:.1f}/s p50 {p50:.2f} ms")
    return results


async def _load(
    client: httpx.AsyncClient, url: str, query: Any, workers: int, seconds: float
) -> tuple[float, float]:
    times: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            response = await client.get(
                f"{url}/v1/search", params={"collection": "sample", "q": query(), "k": "5"}
            )
            response.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return len(times) / (time.perf_counter() - started), statistics.median(times)


def _counters(url: str, key: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
    found = {}
    for line in text.splitlines():
        if line.startswith("hybrid_query_log_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name.removeprefix("hybrid_query_log_")] = float(value)
    return found


def _report(
    results: dict[str, dict[str, list[tuple[float, float]]]],
    counters: dict[str, float],
    args: argparse.Namespace,
) -> str:
    lines = [
        f"Cost of {args.feature}{' (A/A: both off)' if args.aa else ''}: {args.rounds} rounds, "
        f"throughput with {args.concurrency} workers and p50 with one, {args.seconds:g} s "
        "each per server and mix, GET /v1/search k=5 (medians over rounds)",
        "",
        "| mix | on: searches/s | off: searches/s | throughput on/off | "
        "on: p50 ms | off: p50 ms | p50 on - off |",
        "|---|---|---|---|---|---|---|",
    ]
    for mix, by_server in results.items():
        on, off = by_server["on"], by_server["off"]
        ratio = statistics.median(a[0] / b[0] for a, b in zip(on, off, strict=True))
        added = statistics.median(a[1] - b[1] for a, b in zip(on, off, strict=True))
        lines.append(
            f"| {mix} | {statistics.median(r for r, _ in on):.1f} | "
            f"{statistics.median(r for r, _ in off):.1f} | {ratio:.3f} | "
            f"{statistics.median(p for _, p in on):.2f} | "
            f"{statistics.median(p for _, p in off):.2f} | {added:+.2f} |"
        )
    shown = ", ".join(f"{name} {value:g}" for name, value in sorted(counters.items()))
    lines += ["", f"Query log counters of the first server at the end: {shown}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
