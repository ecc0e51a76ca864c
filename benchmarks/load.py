"""Load on the real HTTP service: rising concurrency, overload, then recovery.

    python benchmarks/load.py [--url URL] [--concurrency 1,2,4,8,16,32,64] [--step-seconds 10]
        [--overload-seconds 60] [--out load.md] [--plot load.png]

Without `--url` it starts `hybrid serve --sample` on a fresh data directory (a temporary one,
or `--data-dir`) with its embedded PostgreSQL and a free loopback port, waits for `/ready`,
and at the end stops it with SIGTERM and times the shutdown. The server takes its settings
from the environment: `HYBRID_MAX_IN_FLIGHT=8 python benchmarks/load.py` measures another
admission limit. With `--url`, the key goes in `HYBRID_KEY` (a started server's local admin
key is read from its data directory).

The mix, drawn per request: searches of the `sample` collection (a handful of queries about
the sample documents; a share of them made unique, so that they miss the result and query
embedding caches), and a small share of writes: metadata PATCHes of one document that every
writer shares, and one-document JSON ingests with new text each time (re-embedded, chunks
replaced), half of them of one shared document, half of a document of the worker's own. The
writes are undone at the end, so a running service given with `--url` is left as found.

1. Rising concurrency, closed loop: N workers each send their next request as soon as the
   last one is answered, for `--step-seconds` per N. Per step: ok answers per second,
   p50/p95/p99 of admitted answers (all but 503 and 429), answers per status code, the share
   of searches the result cache served, and errors: no answer (connection error, timeout),
   5xx other than 503, or any other unexpected status. There should be none.
2. Overload: twice the concurrency at which throughput stopped growing (by less than 10% to
   the next step), or twice the largest step, for `--overload-seconds`. A refused worker waits
   `--refusal-pause` before its next request (one that retried at once would spin on the cores
   the server needs). Reports the admitted p99, the share refused and how long a refusal
   took, refusals without Retry-After, errors, and the longest request: every request is
   bounded by the client timeout (`--timeout`), and one that runs into it is an error.
   `/health`, polled twice a second meanwhile, gives the requests in flight as the server
   counts them, and how quickly its event loop answers.
3. Recovery: once the load has stopped, a burst of `--probe-requests` single searches every
   second, until their p95 is within 1.5x the unloaded p95 measured before phase 1. Probes are
   unique searches: the whole read path (query embedding, SQL), never a cache.

Prints Markdown (and writes it with `--out`); `--plot` draws throughput and latency against
concurrency, and the overload as a timeline.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.db import embedded
from app.eval.metrics import percentile

COLLECTION = "sample"
QUERIES = (
    "how does rank fusion work",
    "bm25 term frequency saturation",
    "approximate nearest neighbour index recall",
    "split long documents into chunks",
    "hide private documents from users who may not read them",
    "does it need an internet connection",
)
PATCHED_DOCUMENT = "faq-postgres"  # every metadata PATCH goes to this one document
SHARED_DOCUMENT = "load-shared"  # half of the ingests rewrite this one
REFUSED = (429, 503)
GROWTH = 1.1  # a step that adds less than 10% throughput ends the growth
RECOVERED = 1.5  # recovered: probe p95 within this factor of the unloaded p95
WARM_UP = 5  # probes before the baseline, untimed
_unique = itertools.count()


@dataclass(frozen=True)
class Call:
    """One request of the mix."""

    kind: str  # search, patch or ingest
    method: str
    path: str
    params: dict[str, Any] | None = None
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class Outcome:
    """What one request got, and when it ended."""

    kind: str
    status: int | None  # None: no answer (connection error, timeout)
    ms: float
    ended: float  # time.monotonic()
    retry_after: bool = False
    origin: str | None = None  # a search's `cache`: computed, cached or shared
    detail: str = ""  # why it failed or was refused


@dataclass
class Run:
    """The outcomes of N workers over one period."""

    workers: int
    started: float
    planned_s: float
    seconds: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass(frozen=True)
class Summary:
    """The figures of one run."""

    workers: int
    ok: int
    ok_per_s: float
    admitted_ms: list[float]
    statuses: Counter[int]
    refused: int
    refused_ms: list[float]
    refusal_reasons: Counter[str]
    no_retry_after: int
    errors: Counter[str]
    cached_share: float
    longest_ms: float

    def p(self, q: float) -> float:
        return percentile(self.admitted_ms, q)


@dataclass(frozen=True)
class Window:
    """One burst of recovery probes."""

    at_s: float  # since the load stopped, at the end of the burst
    p95: float
    all_ok: bool


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None
    log: Path | None = None
    scratch: bool = False  # the data directory is ours to delete


def main() -> None:
    args = _arguments()
    print(_machine(), flush=True)
    server = _start(args) if args.url is None else Server(args.url.rstrip("/"))
    shutdown = ""
    try:
        results = asyncio.run(_measure(server.url, args))
    finally:
        if server.process is not None:
            shutdown = _stop(server)
            print(shutdown, flush=True)
    report = _report(server, args, results, shutdown)
    print("\n" + report)
    if args.out:
        args.out.write_text(report + "\n")
        print(f"wrote {args.out}")
    if args.plot:
        _plot(args.plot, results)
        print(f"wrote {args.plot}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="A running service (with the sample collection)")
    parser.add_argument("--data-dir", type=Path, help="Data directory of the started server")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64", help="Workers per step")
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--overload-seconds", type=float, default=60.0)
    parser.add_argument("--overload-concurrency", type=int, help="Instead of the derived one")
    parser.add_argument("--write-share", type=float, default=0.1, help="Share of writes")
    parser.add_argument("--novel-share", type=float, default=0.25, help="Unique searches")
    parser.add_argument("--refusal-pause", type=float, default=0.1, help="Seconds, after 503")
    parser.add_argument("--timeout", type=float, default=30.0, help="Client timeout, seconds")
    parser.add_argument("--baseline-requests", type=int, default=30)
    parser.add_argument("--probe-requests", type=int, default=10, help="Per recovery burst")
    parser.add_argument("--recovery-seconds", type=float, default=60.0, help="Longest wait")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="Seconds to /ready")
    parser.add_argument("--out", type=Path, help="Write the Markdown report here")
    parser.add_argument("--plot", type=Path, help="Write a PNG plot here")
    args = parser.parse_args()
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    return args


def _machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores, {memory:.1f} GiB, load average {load}"


# --- the server -------------------------------------------------------------------------------


def _start(args: argparse.Namespace) -> Server:
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="hybrid-load-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = data_dir.with_name(data_dir.name + ".log")
    # A fresh embedded server in the data directory, whatever DATABASE_URL says.
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["HYBRID_DATA_DIR"] = str(data_dir)
    command = [_hybrid(), "serve", "--sample", "--host", "127.0.0.1", "--port", str(port)]
    print(f"starting {' '.join(command[1:])} (data {data_dir}, log {log}) ...", flush=True)
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
            start_new_session=True,  # Ctrl+C reaches this script only; it stops the server
        )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", process, data_dir, log, args.data_dir is None)
    try:
        seconds = _wait_ready(server, args.start_timeout)
    except BaseException:
        print(_stop(server), flush=True)
        raise
    print(f"ready after {seconds:.0f} s", flush=True)
    # The local admin key the server made on its first start (loopback, authentication on).
    os.environ["HYBRID_KEY"] = (data_dir / "admin.key").read_text().strip()
    return server


def _hybrid() -> str:
    beside = Path(sys.executable).parent / "hybrid"
    return str(beside) if beside.exists() else shutil.which("hybrid") or "hybrid"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(server: Server, timeout: float) -> float:
    assert server.process is not None
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.process.poll() is not None:
            code = server.process.returncode
            raise SystemExit(f"the server exited with status {code}; see {server.log}")
        try:
            if httpx.get(server.url + "/ready", timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready within {timeout:.0f} s; see {server.log}")


def _stop(server: Server) -> str:
    """SIGTERM, then wait; what happened, in words."""
    assert server.process is not None and server.data_dir is not None
    started = time.perf_counter()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=180)  # drain (30 s) and close (60 s) are bounded
        outcome = f"SIGTERM to exit: {time.perf_counter() - started:.1f} s, exit status {code}"
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        embedded.stop(server.data_dir)
        outcome = "SIGTERM: no exit within 180 s, killed"
    if server.scratch:
        shutil.rmtree(server.data_dir, ignore_errors=True)
    return outcome


# --- the mix ----------------------------------------------------------------------------------


def _next_call(rng: random.Random, worker: int, args: argparse.Namespace) -> Call:
    draw = rng.random()
    if draw < args.write_share / 2:
        return _patch(worker)
    if draw < args.write_share:
        return _ingest(worker, shared=rng.random() < 0.5)
    return _search(rng.choice(QUERIES), novel=rng.random() < args.novel_share)


def _search(query: str, *, novel: bool) -> Call:
    q = f"{query} n{next(_unique)}" if novel else query
    return Call("search", "GET", "/v1/search", params={"collection": COLLECTION, "q": q})


def _patch(worker: int) -> Call:
    body = {"metadata": {"load": {"worker": worker, "n": next(_unique)}}}
    return Call("patch", "PATCH", f"/v1/collections/{COLLECTION}/documents/{PATCHED_DOCUMENT}",
                body=body)  # fmt: skip


def _ingest(worker: int, *, shared: bool) -> Call:
    n = next(_unique)
    document = {
        "id": SHARED_DOCUMENT if shared else f"load-worker-{worker}",
        "title": "Load test note",
        "text": f"Note {n} from worker {worker}. Hybrid search merges keyword and vector "
        "results with reciprocal rank fusion; this note changes on every write.",
    }
    return Call("ingest", "POST", f"/v1/collections/{COLLECTION}/documents",
                body={"documents": [document]})  # fmt: skip


async def _send(client: httpx.AsyncClient, call: Call) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.request(call.method, call.path, params=call.params, json=call.body)
    except httpx.HTTPError as exc:
        return Outcome(call.kind, None, _ms(started), time.monotonic(), detail=type(exc).__name__)
    ms, ended = _ms(started), time.monotonic()
    ok = response.is_success
    return Outcome(
        call.kind, response.status_code, ms, ended,
        retry_after="retry-after" in response.headers,
        origin=response.json().get("cache") if ok and call.kind == "search" else None,
        detail="" if ok else _problem(response),
    )  # fmt: skip


def _problem(response: httpx.Response) -> str:
    try:
        detail = str(response.json().get("detail", ""))
    except ValueError:
        detail = response.text
    if "HYBRID_MAX_IN_FLIGHT" in detail:
        return "admission limit"
    return detail[:100]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


# --- the phases -------------------------------------------------------------------------------


async def _measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with _client(url, 1, args) as client:
        await _probes(client, WARM_UP)
        results["baseline"] = await _probes(client, args.baseline_requests)
    print(f"unloaded p95: {_p95(results['baseline']):.1f} ms", flush=True)
    steps = []
    for workers in args.concurrency:
        steps.append(_summarise(await _load(url, workers, args.step_seconds, args)))
        print(_progress(steps[-1]), flush=True)
    results["steps"] = steps
    workers = args.overload_concurrency or 2 * _saturation(steps)
    print(f"overload: {workers} workers for {args.overload_seconds:.0f} s ...", flush=True)
    results["overload"], results["health"] = await asyncio.gather(
        _load(url, workers, args.overload_seconds, args),
        _watch_health(url, args.overload_seconds, args),
    )
    async with _client(url, 1, args) as client:
        results["after"] = (await client.get("/health")).json()
        results["recovery"] = await _recover(client, _p95(results["baseline"]), args)
        await _undo_writes(client, max([*args.concurrency, workers]))
    return results


def _client(url: str, connections: int, args: argparse.Namespace) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    key = os.environ.get("HYBRID_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits, headers=headers)


async def _load(url: str, workers: int, seconds: float, args: argparse.Namespace) -> Run:
    async with _client(url, workers, args) as client:
        run = Run(workers, time.monotonic(), seconds)
        until = run.started + seconds
        await asyncio.gather(*(_worker(client, w, until, run, args) for w in range(workers)))
        run.seconds = time.monotonic() - run.started
    return run


async def _worker(
    client: httpx.AsyncClient, worker: int, until: float, run: Run, args: argparse.Namespace
) -> None:
    rng = random.Random(worker)
    while time.monotonic() < until:
        outcome = await _send(client, _next_call(rng, worker, args))
        run.outcomes.append(outcome)
        if outcome.status in REFUSED:
            await asyncio.sleep(args.refusal_pause)


async def _watch_health(
    url: str, seconds: float, args: argparse.Namespace
) -> list[tuple[int, float]]:
    """`/health` twice a second: (requests in flight, ms to answer). It is answered on the
    event loop, so its latency shows a loop too busy to reach new requests."""
    samples = []
    async with _client(url, 1, args) as client:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                in_flight = int((await client.get("/health")).json()["in_flight"])
            except httpx.HTTPError:
                in_flight = -1  # no answer within the client timeout
            samples.append((in_flight, _ms(started)))
            await asyncio.sleep(0.5)
    return samples


async def _probes(client: httpx.AsyncClient, count: int) -> list[Outcome]:
    """Single unique searches, one after another."""
    return [await _send(client, _search(QUERIES[i % len(QUERIES)], novel=True))
            for i in range(count)]  # fmt: skip


async def _recover(
    client: httpx.AsyncClient, baseline_p95: float, args: argparse.Namespace
) -> list[Window]:
    """A burst of probes every second until their p95 is back within the bound."""
    stopped, windows = time.monotonic(), []
    while time.monotonic() - stopped < args.recovery_seconds:
        burst_started = time.monotonic()
        outcomes = await _probes(client, args.probe_requests)
        all_ok = all(o.status == 200 for o in outcomes)
        windows.append(Window(time.monotonic() - stopped, _p95(outcomes), all_ok))
        if all_ok and windows[-1].p95 <= RECOVERED * baseline_p95:
            break
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - burst_started)))
    return windows


async def _undo_writes(client: httpx.AsyncClient, workers: int) -> None:
    ids = [SHARED_DOCUMENT, *(f"load-worker-{w}" for w in range(workers))]
    for external_id in ids:
        path = f"/v1/collections/{COLLECTION}/documents/{external_id}"
        await client.delete(path, params={"purge": "true"})  # 404 for those never written
    patched = f"/v1/collections/{COLLECTION}/documents/{PATCHED_DOCUMENT}"
    await client.patch(patched, json={"metadata": {"load": None}})


def _p95(outcomes: list[Outcome]) -> float:
    return percentile([o.ms for o in outcomes if o.status == 200], 95)


# --- summaries --------------------------------------------------------------------------------


def _summarise(run: Run) -> Summary:
    outcomes = run.outcomes
    refused = [o for o in outcomes if o.status in REFUSED]
    searches = [o for o in outcomes if o.origin is not None]
    ok = sum(1 for o in outcomes if _ok(o))
    return Summary(
        workers=run.workers,
        ok=ok,
        ok_per_s=ok / run.seconds,
        admitted_ms=[o.ms for o in outcomes if o.status is not None and o.status not in REFUSED],
        statuses=Counter(o.status for o in outcomes if o.status is not None),
        refused=len(refused),
        refused_ms=[o.ms for o in refused],
        refusal_reasons=Counter(o.detail for o in refused),
        no_retry_after=sum(1 for o in refused if not o.retry_after),
        errors=Counter(_error(o) for o in outcomes if _error(o)),
        cached_share=sum(o.origin != "computed" for o in searches) / max(len(searches), 1),
        longest_ms=max((o.ms for o in outcomes), default=0.0),
    )


def _ok(outcome: Outcome) -> bool:
    return outcome.status is not None and 200 <= outcome.status < 300


def _error(outcome: Outcome) -> str:
    """What was wrong with an answer that is neither ok nor a refusal ('' when nothing)."""
    if outcome.status is None:
        return f"{outcome.kind}: {outcome.detail}"
    if _ok(outcome) or outcome.status in REFUSED:
        return ""
    return f"{outcome.kind}: HTTP {outcome.status} {outcome.detail}"


def _saturation(steps: list[Summary]) -> int:
    """The concurrency at which throughput stopped growing (the largest when it never did)."""
    for step, following in itertools.pairwise(steps):
        if following.ok_per_s < GROWTH * step.ok_per_s:
            return step.workers
    return steps[-1].workers


def _timeline(run: Run) -> list[tuple[int, int, int, int, float]]:
    """Per whole second of the run: (second, ok, refused, errors, admitted p99 ms)."""
    seconds: dict[int, list[Outcome]] = {s: [] for s in range(int(run.planned_s))}
    for outcome in run.outcomes:  # answers after the planned end are left out
        seconds.get(int(outcome.ended - run.started), []).append(outcome)
    rows = []
    for second, outcomes in seconds.items():
        s = _summarise(Run(run.workers, run.started, 1.0, 1.0, outcomes))
        rows.append((second, s.ok, s.refused, s.errors.total(), s.p(99)))
    return rows


def _progress(s: Summary) -> str:
    return (f"{s.workers:>4} workers: {s.ok_per_s:7.1f} ok/s, p50 {s.p(50):.0f} p95 {s.p(95):.0f} "
            f"p99 {s.p(99):.0f} ms, refused {s.refused}, errors {s.errors.total()}")  # fmt: skip


# --- the report -------------------------------------------------------------------------------


def _report(
    server: Server, args: argparse.Namespace, results: dict[str, Any], shutdown: str
) -> str:
    lines = [*_setup(server, args, results), "", *_steps_table(results["steps"], args)]
    limit = _in_flight_limit(server)
    overload = _overload(results["overload"], results["health"], results["after"], limit, args)
    lines += ["", *overload]
    lines += ["", *_recovery(results["recovery"], _p95(results["baseline"]), args)]
    if shutdown:
        lines += ["", "## Shutdown", "", shutdown]
    return "\n".join(lines)


def _in_flight_limit(server: Server) -> int | None:
    """The admission limit of the server started here (unknown for `--url`)."""
    if server.process is None:
        return None
    return int(os.environ.get("HYBRID_MAX_IN_FLIGHT") or 0) or 4 * (os.cpu_count() or 1)


def _setup(server: Server, args: argparse.Namespace, results: dict[str, Any]) -> list[str]:
    limit = _in_flight_limit(server)
    where = (f"`hybrid serve --sample` started here, HYBRID_MAX_IN_FLIGHT={limit}"
             if server.process else f"{server.url}")  # fmt: skip
    writes = f"{args.write_share:.0%} writes (half metadata PATCHes of `{PATCHED_DOCUMENT}`, "
    return [
        "# Load on the HTTP service",
        "",
        _machine(),
        f"service: {where}",
        f"mix: {1 - args.write_share:.0%} searches ({len(QUERIES)} queries, "
        f"{args.novel_share:.0%} of them unique), {writes}half one-document JSON ingests, "
        f"half of them of `{SHARED_DOCUMENT}`)",
        f"client: closed loop, timeout {args.timeout:.0f} s, "
        f"{args.refusal_pause} s pause after a refusal",
        f"unloaded p95 (single unique searches, {args.baseline_requests} requests): "
        f"{_p95(results['baseline']):.1f} ms",
    ]


def _steps_table(steps: list[Summary], args: argparse.Namespace) -> list[str]:
    lines = [
        f"## Rising concurrency ({args.step_seconds:.0f} s per step)",
        "",
        "| workers | ok/s | p50 ms | p95 ms | p99 ms | answers by status | cached searches "
        "| errors |",
        "|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for s in steps:
        statuses = " ".join(f"{code}: {n}" for code, n in sorted(s.statuses.items()))
        lines.append(
            f"| {s.workers} | {s.ok_per_s:.1f} | {s.p(50):.1f} | {s.p(95):.1f} | {s.p(99):.1f} "
            f"| {statuses} | {s.cached_share:.0%} | {_counts(s.errors) or 0} |"
        )
    return lines


def _overload(
    run: Run,
    health: list[tuple[int, float]],
    after: dict[str, Any],
    limit: int | None,
    args: argparse.Namespace,
) -> list[str]:
    s = _summarise(run)
    total = len(run.outcomes)
    overrun = max(o.ended for o in run.outcomes) - run.started - args.overload_seconds
    below = limit is not None and run.workers <= limit
    note = f"at most HYBRID_MAX_IN_FLIGHT={limit}: no refusals expected" if below else ""
    return [
        f"## Overload ({run.workers} workers, {args.overload_seconds:.0f} s)",
        "",
        *([note, ""] if note else []),
        "| | |",
        "|---|---|",
        f"| ok answers/s | {s.ok_per_s:.1f} |",
        f"| admitted p50 / p95 / p99 | {s.p(50):.1f} / {s.p(95):.1f} / {s.p(99):.1f} ms |",
        f"| refused (503/429) | {s.refused / max(total, 1):.1%} ({s.refused} of {total}) |",
        f"| why refused | {_counts(s.refusal_reasons) or '-'} |",
        f"| refusal latency p50 / p99 | {_percentiles(s.refused_ms, 50, 99)} |",
        f"| refusals without Retry-After | {s.no_retry_after} |",
        f"| other errors | {_counts(s.errors) or 0} |",
        f"| longest request | {s.longest_ms / 1000:.2f} s (client timeout {args.timeout:.0f} s) |",
        f"| last answer after the end | {max(overrun, 0):.2f} s |",
        f"| in flight in the server (/health, max) | {max((n for n, _ in health), default=0)} |",
        f"| /health latency p50 / max | {_percentiles([ms for _, ms in health], 50, 100)} |",
        f"| /health after the load | {after.get('in_flight')} in flight, "
        f"oldest {after.get('oldest_request_s')} s |",
    ]


def _recovery(windows: list[Window], baseline: float, args: argparse.Namespace) -> list[str]:
    bound = RECOVERED * baseline
    last = windows[-1] if windows else None
    if last and last.all_ok and last.p95 <= bound:
        verdict = f"back within {RECOVERED}x the unloaded p95 after {last.at_s:.1f} s"
    else:
        verdict = f"not back within {RECOVERED}x the unloaded p95 in {args.recovery_seconds:.0f} s"
    lines = [
        "## Recovery",
        "",
        f"{verdict} (bound {bound:.1f} ms; bursts of {args.probe_requests} single searches)",
        "",
        "| seconds after the load | p95 ms | all ok |",
        "|---:|---:|---|",
    ]
    return lines + [f"| {w.at_s:.1f} | {w.p95:.1f} | {w.all_ok} |" for w in windows]


def _percentiles(values: list[float], *qs: float) -> str:
    return " / ".join(f"{percentile(values, q):.1f}" for q in qs) + " ms" if values else "-"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{what} × {n}" for what, n in counter.most_common())


# --- the plot ---------------------------------------------------------------------------------


def _plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps: list[Summary] = results["steps"]
    workers = [s.workers for s in steps]
    fig, (through, latency, timeline) = plt.subplots(1, 3, figsize=(16, 4.5))
    through.plot(workers, [s.ok_per_s for s in steps], marker="o")
    through.set(xscale="log", xlabel="workers", ylabel="ok answers/s", title="Throughput")
    for q in (50, 95, 99):
        latency.plot(workers, [s.p(q) for s in steps], marker="o", label=f"p{q}")
    latency.set(xscale="log", yscale="log", xlabel="workers", ylabel="ms",
                title="Admitted latency")  # fmt: skip
    latency.legend()
    for axis in (through, latency):
        axis.set_xticks(workers, [str(n) for n in workers])
    _plot_timeline(timeline, results["overload"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_timeline(axis: Any, run: Run) -> None:
    rows = _timeline(run)
    seconds = [r[0] for r in rows]
    axis.plot(seconds, [r[1] for r in rows], label="ok/s")
    axis.plot(seconds, [r[2] for r in rows], label="refused/s")
    axis.plot(seconds, [r[3] for r in rows], label="errors/s")
    axis.set(xlabel="seconds", ylabel="answers/s", title=f"Overload, {run.workers} workers")
    axis.legend(loc="lower left")
    p99 = axis.twinx()
    p99.plot(seconds, [r[4] for r in rows], color="black", linestyle=":", label="admitted p99")
    p99.set_ylabel("admitted p99 ms")
    p99.legend(loc="lower right")


if __name__ == "__main__":
    main()
