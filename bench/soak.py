"""``make soak``: the whole stack under a steady load for minutes. Is memory flat?

Starts the stack as ``make bench`` does (:func:`bench.exchange.bench_stack`: its own NATS with
TLS and the generated authorization, its own PostgreSQL with default durability, the five
services as processes, a local issuer, one registered publisher), then:

1. **Ramp**: measures the most exchanges/s the stack answers at 32 requests in flight
   (``--ramp-seconds``, closed loop, as ``make bench`` measures it).
2. **Steady load**: ``POST /_/oidc/mint-token`` with fresh tokens (each signed once, never
   replayed) at a fixed arrival rate, ``--fraction`` (0.5) of that maximum, for ``--duration``
   seconds (600). Open loop: each request leaves at its scheduled time whether or not the ones
   before it were answered, and its latency is counted from that time, so a stalling stack
   shows as latency and errors rather than as a client that politely slows down.
3. Every ``--sample`` seconds (10) it reads each process's memory from ``/proc``: the
   resident set (VmRSS) of the five services and nats-server, and PostgreSQL's postmaster and
   backends as two figures: their private memory (the sum of RssAnon, where a leak would show)
   and the shared memory they touched (the largest RssShmem: shared_buffers filling up as the
   tables grow, which is by design and left out of the verdict).

It prints the answers by status and code, latency p50/p99 per minute, the memory table, and a
verdict per process: flat unless the mean of the last minute exceeds the mean of the second
minute (the first is warm-up: pools, caches, allocator arenas) by more than ``--growth-mib``
(8) *and* ``--growth-pct`` (10%). Steady-state noise stays inside both: pymalloc arenas and the
cyclic collector move a Python process by a few MiB, nats-server's Go heap saw-tooths between
collections, and 10% of a small process is a few MiB. A leak does not: at the default 10
minutes and a few hundred exchanges/s, 8 MiB over the ~100,000 exchanges between the two
windows is under 100 bytes per exchange, less than one retained dict, task or future each. The
growth per exchange is printed too. Runs shorter than three minutes compare the second and last
thirds instead. Exit status 1 when a process is not flat.

Tokens are signed before each phase, on every CPU, so that signing does not compete with the
stack for CPU while it is measured; they are valid for the whole run (the issuer's
``max_lifetime`` is raised to match).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import statistics
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from deploy.devstack.issuer import SigningKey, compact, github_claims

from bench.exchange import AUDIENCE, Bench, bench_stack, descendants, drive

MIB = 1024 * 1024
# Figures printed per process, in this order; PostgreSQL is two (see the module doc).
PROCESSES = ("gateway", "verifier", "registry", "minter", "jwks", "nats-server", "pg-private", "pg-shared")
IN_VERDICT = tuple(p for p in PROCESSES if p != "pg-shared")
CLIENT_TIMEOUT_S = 30.0


# -- memory ---------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssShmem of ``pid`` in bytes (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "RssAnon", "RssShmem"}:
            out[name] = int(value.split()[0]) * 1024
    return out


def postgres_pids(top: int) -> list[int]:
    """The PostgreSQL processes at and below ``top`` (the postmaster, under runuser when the
    stack runs as root, and its backends and workers)."""
    out = []
    for pid in (top, *descendants(top)):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres":
                out.append(pid)
        except OSError:
            continue
    return out


def memory(pids: Mapping[str, int]) -> dict[str, int]:
    """Bytes per entry of :data:`PROCESSES`; ``pids["postgres"]`` is the process above the
    postmaster, whose descendants are PostgreSQL's processes."""
    out = {name: proc_status(pid).get("VmRSS", 0) for name, pid in pids.items() if name != "postgres"}
    pg = [proc_status(p) for p in postgres_pids(pids["postgres"])]
    out["pg-private"] = sum(s.get("RssAnon", 0) for s in pg)
    out["pg-shared"] = max((s.get("RssShmem", 0) for s in pg), default=0)
    return out


@dataclasses.dataclass(frozen=True)
class Verdict:
    process: str
    baseline: float  # mean bytes in the baseline window
    final: float  # mean bytes in the final window
    per_exchange: float  # growth in bytes per exchange sent between the windows
    flat: bool

    @property
    def growth(self) -> float:
        return self.final - self.baseline

    @property
    def growth_pct(self) -> float:
        return 100 * self.growth / self.baseline if self.baseline else 0.0


def windows(duration: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """(baseline, final) windows in seconds since the steady load began: the second minute and
    the last one, or the second and last thirds of a run shorter than three minutes."""
    width = min(60.0, duration / 3)
    return (width, 2 * width), (duration - width, duration)


def verdicts(
    samples: Sequence[tuple[float, Mapping[str, int]]],
    duration: float,
    rate: float,
    *,
    growth_mib: float,
    growth_pct: float,
    processes: Iterable[str] = IN_VERDICT,
) -> list[Verdict]:
    """Flat unless the final window's mean exceeds the baseline's by more than ``growth_mib``
    MiB and more than ``growth_pct`` percent (see the module doc for why both)."""
    (b0, b1), (f0, f1) = windows(duration)
    out = []
    for name in processes:
        base = [(t, m[name]) for t, m in samples if b0 <= t < b1 and name in m]
        last = [(t, m[name]) for t, m in samples if f0 <= t <= f1 and name in m]
        if not base or not last:
            continue
        b, f = statistics.fmean(v for _, v in base), statistics.fmean(v for _, v in last)
        # Exchanges sent between the windows' mean sample times.
        exchanges = max(
            rate * (statistics.fmean(t for t, _ in last) - statistics.fmean(t for t, _ in base)), 1.0
        )
        grew = f - b > growth_mib * MIB and f - b > b * growth_pct / 100
        out.append(Verdict(name, b, f, (f - b) / exchanges, flat=not grew))
    return out


# -- latency --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclasses.dataclass
class Answer:
    at: float  # scheduled send time, seconds since the steady load began
    latency: float  # seconds from the scheduled send time to the whole answer
    status: int  # HTTP status; 0 when the client got no answer
    code: str  # the refusal's error code, or the client's exception; "" for 200


@dataclasses.dataclass
class Steady:
    rate: float
    duration: float
    answers: list[Answer] = dataclasses.field(default_factory=list)
    samples: list[tuple[float, dict[str, int]]] = dataclasses.field(default_factory=list)
    send_lag: list[float] = dataclasses.field(default_factory=list)  # seconds behind schedule, per request
    dropped: int = 0  # not sent: the client already had ``max_inflight`` outstanding


def per_minute(answers: Sequence[Answer], width: float = 60.0) -> list[dict[str, Any]]:
    """Answers by ``width``-second bin of their scheduled time: count, errors, p50, p99 (ms)."""
    bins: dict[int, list[Answer]] = {}
    for a in answers:
        bins.setdefault(int(a.at // width), []).append(a)
    rows = []
    for index in sorted(bins):
        group = bins[index]
        latencies = [a.latency for a in group if a.status]
        rows.append(
            {
                "from_s": round(index * width),
                "answers": len(group),
                "errors": sum(1 for a in group if a.status != 200),
                "p50_ms": round(percentile(latencies, 50) * 1000, 1),
                "p99_ms": round(percentile(latencies, 99) * 1000, 1),
            }
        )
    return rows


def error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["errors"][0]["code"])
    except (ValueError, KeyError, IndexError, TypeError):
        return "(no code)"


# -- tokens ---------------------------------------------------------------------------------

_SIGNER: dict[str, Any] = {}


def _init_signer(pem: bytes, kid: str, issuer: str, lifetime: int) -> None:
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    key = SigningKey(kid=kid, private=private)
    _SIGNER.update(key=key, header={"alg": key.alg, "kid": key.kid, "typ": "JWT"}, issuer=issuer)
    _SIGNER["lifetime"] = lifetime


def _sign(count: int) -> list[str]:
    now = int(time.time())
    key, header = _SIGNER["key"], _SIGNER["header"]
    claims = github_claims(AUDIENCE, issuer=_SIGNER["issuer"], now=now, exp=now + _SIGNER["lifetime"])
    out = []
    for _ in range(count):
        claims["jti"] = str(uuid.uuid4())
        out.append(compact(key, header, claims))
    return out


def sign_tokens(bench: Bench, count: int, lifetime: int) -> list[str]:
    """``count`` fresh tokens of the benchmark's publisher, signed on every CPU."""
    key = bench.issuer.signing_key
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    workers = os.cpu_count() or 1
    chunk = 500
    sizes = [chunk] * (count // chunk) + ([count % chunk] if count % chunk else [])
    # spawn, not fork: this process runs the issuer's HTTP server in a thread.
    with ProcessPoolExecutor(
        workers,
        mp_context=get_context("spawn"),
        initializer=_init_signer,
        initargs=(pem, key.kid, bench.issuer.issuer, lifetime),
    ) as pool:
        return [token for batch in pool.map(_sign, sizes) for token in batch]


# -- the load -------------------------------------------------------------------------------


async def steady(  # noqa: C901  (one loop that sends, one that samples)
    bench: Bench,
    tokens: list[str],
    rate: float,
    duration: float,
    sample_every: float,
    max_inflight: int,
) -> Steady:
    """Send ``tokens`` at ``rate`` per second for ``duration`` seconds, open loop, sampling
    memory every ``sample_every`` seconds."""
    out = Steady(rate, duration)
    pids = bench.pids()
    url = bench.mint_url
    total = min(len(tokens), int(rate * duration))
    start = time.perf_counter() + 0.2
    inflight: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, token: str, at: float) -> None:
        try:
            async with session.post(url, json={"token": token}) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.answers.append(Answer(at - start, time.perf_counter() - at, 0, type(exc).__name__))
            return
        code = "" if status == 200 else error_code(body)
        out.answers.append(Answer(at - start, time.perf_counter() - at, status, code))

    async def sampler() -> None:
        n = 0
        while True:
            at = start + n * sample_every
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            out.samples.append((round(at - start, 1), await asyncio.to_thread(memory, pids)))
            if n and (n * sample_every) % 60 < sample_every:
                progress(out, at - start)
            n += 1
            if n * sample_every > duration:
                return

    connector = aiohttp.TCPConnector(limit=max_inflight)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sampling = asyncio.create_task(sampler())
        for i in range(total):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            out.send_lag.append(max(0.0, time.perf_counter() - at))
            if len(inflight) >= max_inflight:
                out.dropped += 1
                continue
            task = asyncio.create_task(one(session, tokens[i], at))
            tokens[i] = ""  # each token is sent once; let it go
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.wait(inflight)
        await sampling
    return out


def progress(out: Steady, now: float) -> None:
    done = [a for a in out.answers if now - 60 <= a.at < now]
    latencies = [a.latency for a in done if a.status]
    rss = ", ".join(f"{k} {v / MIB:.0f}" for k, v in out.samples[-1][1].items())
    print(
        f"  {now:5.0f} s: {len(done)} answers in the last minute, "
        f"{sum(1 for a in done if a.status != 200)} not 200, "
        f"p50 {percentile(latencies, 50) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f} ms; "
        f"MiB: {rss}",
        flush=True,
    )


# -- the report -----------------------------------------------------------------------------


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [list(map(str, header)), *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def events_stream(bench: Bench) -> dict[str, int]:
    """Bytes and messages of the events stream, from nats-server's monitoring port."""
    url = f"http://127.0.0.1:{bench.nats.monitor_port}/jsz?streams=true"
    with urllib.request.urlopen(url, timeout=5) as resp:
        jsz = json.load(resp)
    for account in jsz.get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream.get("name", "").endswith("_EVENTS"):
                state = stream.get("state", {})
                return {"bytes": int(state.get("bytes", 0)), "messages": int(state.get("messages", 0))}
    return {}


def report(
    run: Steady, found: list[Verdict], stream: Mapping[str, int], exchanges: int, sample_every: float
) -> None:
    answers = run.answers
    outcomes = Counter((a.status, a.code) for a in answers)
    if run.dropped:
        outcomes[(0, f"not sent: {run.dropped} over the in-flight cap")] = run.dropped
    print(f"\nAnswers: {len(answers)} of {len(run.send_lag)} sent at {run.rate:.1f}/s")
    print(
        table(
            ("status", "code", "count"), [(s or "-", c or "-", n) for (s, c), n in sorted(outcomes.items())]
        )
    )

    lag = sorted(run.send_lag)
    print(
        f"\nSend lag behind the schedule: p99 {percentile(lag, 99) * 1000:.1f} ms, "
        f"max {(lag[-1] if lag else 0) * 1000:.1f} ms"
    )
    print("\nLatency per minute (from the scheduled send time):")
    rows = per_minute(answers)
    print(
        table(
            ("from s", "answers", "not 200", "p50 ms", "p99 ms"),
            [(r["from_s"], r["answers"], r["errors"], r["p50_ms"], r["p99_ms"]) for r in rows],
        )
    )

    print(f"\nMemory (MiB), every {sample_every:g} s; pg-private: PostgreSQL's RssAnon summed over its")
    print(
        "processes; pg-shared: the shared memory they touched (shared_buffers filling, not in the verdict):"
    )
    print(
        table(
            ("t s", *PROCESSES),
            [(f"{t:g}", *(f"{m.get(p, 0) / MIB:.1f}" for p in PROCESSES)) for t, m in run.samples],
        )
    )

    (b0, b1), (f0, f1) = windows(run.duration)
    print(f"\nVerdict: mean of {f0:g}-{f1:g} s against {b0:g}-{b1:g} s")
    print(
        table(
            ("process", "baseline MiB", "final MiB", "growth MiB", "growth %", "B/exchange", "verdict"),
            [
                (
                    v.process,
                    f"{v.baseline / MIB:.1f}",
                    f"{v.final / MIB:.1f}",
                    f"{v.growth / MIB:+.1f}",
                    f"{v.growth_pct:+.1f}",
                    f"{v.per_exchange:+.0f}",
                    "flat" if v.flat else "GROWS",
                )
                for v in found
            ],
        )
    )
    if stream:
        per = stream["bytes"] / max(exchanges, 1)
        print(
            f"\nEvents stream after the run: {stream['bytes'] / MIB:.1f} MiB in {stream['messages']:,} "
            f"messages, {per:.0f} bytes per exchange answered ({exchanges:,}: warm-up, ramp and load)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="trustpub soak: steady open-loop load, memory over time")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of steady load (600)")
    parser.add_argument("--fraction", type=float, default=0.5, help="of the ramp's maximum rate (0.5)")
    parser.add_argument("--ramp-seconds", type=float, default=10.0, help="the ramp at 32 in flight (10)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples (10)")
    parser.add_argument("--growth-mib", type=float, default=8.0, help="verdict: MiB of growth allowed (8)")
    parser.add_argument("--growth-pct", type=float, default=10.0, help="verdict: percent allowed (10)")
    parser.add_argument("--max-inflight", type=int, default=2048, help="client cap on outstanding requests")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not 0 < args.fraction <= 1 or args.duration < 30 or args.sample <= 0:
        parser.error("--fraction must be in (0, 1], --duration at least 30 s, --sample positive")

    ceiling = 2000  # exchanges/s the ramp can measure at most (make bench's best is under 1,500)
    # Every token stays valid until the run ends (signing, ramp and load, with room to spare).
    lifetime = int(args.duration + args.ramp_seconds + 1800)
    with bench_stack(issuers_toml_extra=f"max_lifetime = {lifetime}\n") as bench:
        print(
            f"stack up; signing {int(ceiling * args.ramp_seconds) + 200:,} tokens for the ramp ...",
            flush=True,
        )
        tokens = sign_tokens(bench, int(ceiling * args.ramp_seconds) + 200, lifetime)
        asyncio.run(drive(bench.mint_url, tokens[:200], 8, 2))  # warm-up: keys fetched, pools filled
        ramp = asyncio.run(drive(bench.mint_url, tokens[200:], 32, args.ramp_seconds))
        rate = args.fraction * ramp["exchanges_per_s"]
        print(
            f"ramp: {ramp['exchanges_per_s']:.0f} exchanges/s at 32 in flight (p50 {ramp['p50_ms']} ms, "
            f"p99 {ramp['p99_ms']} ms, errors {ramp['errors']}); steady load: {rate:.1f}/s "
            f"for {args.duration:g} s",
            flush=True,
        )
        count = math.ceil(rate * args.duration)
        print(f"signing {count:,} tokens ...", flush=True)
        tokens = sign_tokens(bench, count, lifetime)
        run = asyncio.run(steady(bench, tokens, rate, args.duration, args.sample, args.max_inflight))
        stream = events_stream(bench)
    found = verdicts(run.samples, args.duration, rate, growth_mib=args.growth_mib, growth_pct=args.growth_pct)
    answered = 200 + ramp["exchanges"] + sum(ramp["errors"].values()) + len(run.answers)
    report(run, found, stream, answered, args.sample)
    flat = all(v.flat for v in found)
    grown = ", ".join(v.process for v in found if not v.flat)
    print(f"\nmemory: {'flat' if flat else 'GROWS: ' + grown}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "ramp": ramp,
                    "rate": rate,
                    "duration": args.duration,
                    "answers": {
                        f"{s} {c}".strip(): n
                        for (s, c), n in Counter((a.status, a.code) for a in run.answers).items()
                    },
                    "per_minute": per_minute(run.answers),
                    "samples": run.samples,
                    "verdicts": [dataclasses.asdict(v) | {"growth": v.growth} for v in found],
                    "events_stream": stream,
                },
                indent=2,
            )
        )
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
