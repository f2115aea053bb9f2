"""``make bench``: mint-token throughput and latency on this machine.

Starts its own NATS and PostgreSQL (default durability settings, as the reference figures in
DESIGN.md, "Performance", were measured), the five services as processes, and a local issuer;
registers one publisher; then drives ``POST /_/oidc/mint-token`` with fresh tokens (each
signed once, never replayed) at 1 and at 32 requests in flight for a fixed time each, and
prints exchanges/s, p50, p99, the error count and the CPU each process spent per exchange.

A calibration in the same run (jwcrypto RS256 verifies/s with one imported key, 8,384/s on the
reference machine: DESIGN.md, "Performance") says how fast this machine is today, so
figures can be compared with the reference as ratios rather than across noisy days.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from deploy.devstack.issuer import DevIssuer, github_claims, offline_builtins_toml
from deploy.devstack.servers import NatsServer, PostgresServer
from deploy.devstack.stack import Stack

AUDIENCE = "trustpub-bench"
# The publisher every bench token matches (github_claims' defaults; both ids pinned at
# registration, so no exchange takes the publisher's row lock).
PUBLISHER = (
    "--owner",
    "octo-org",
    "--owner-id",
    "1001",
    "--repository",
    "demo",
    "--repository-id",
    "2002",
    "--workflow",
    "release.yml",
    "--environment",
    "release",
)
REFERENCE = {"rs256_verify_per_s": 8384, "exchanges_per_s_32": 1443, "p99_ms_32": 34.1, "p50_ms_1": 2.35}


def calibrate(seconds: float = 1.5) -> float:
    """jwcrypto RS256 verifications per second with a cached key (the reference machine's figure
    is in DESIGN.md, "Performance")."""
    from jwcrypto import jwk, jwt  # noqa: PLC0415

    issuer = DevIssuer()
    token = issuer.github_token(AUDIENCE)
    key = jwk.JWK(**issuer.signing_key.public_jwk())
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        jwt.JWT(jwt=token, key=key, algs=["RS256"], check_claims={"exp": None})
        n += 1
    return n / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (PostgreSQL runs under runuser: postmaster, then backends)."""
    parent: dict[int, int] = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(path.parent.name)] = int(path.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    out, frontier = [], [pid]
    while frontier:
        kids = [c for c, p in parent.items() if p in frontier]
        out.extend(kids)
        frontier = kids
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (exited backends' time is lost)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            total += cpu_seconds(p)
        except OSError:
            continue
    return total


async def drive(url: str, tokens: list[str], concurrency: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    it = iter(tokens)
    deadline = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                token = next(it, None)
                if token is None:
                    errors["out-of-tokens"] = errors.get("out-of-tokens", 0) + 1
                    return
                t0 = time.perf_counter()
                async with session.post(url, json={"token": token}) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        code = json.loads(body)["errors"][0]["code"]
                        errors[code] = errors.get(code, 0) + 1
                        continue
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "concurrency": concurrency,
        "exchanges": len(latencies),
        "seconds": round(elapsed, 2),
        "exchanges_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "errors": errors,
    }


def make_tokens(issuer: DevIssuer, n: int) -> list[str]:
    return [
        issuer.token(github_claims(AUDIENCE, issuer=issuer.issuer, jti=str(uuid.uuid4()))) for _ in range(n)
    ]


def register(database_url: str) -> None:
    """The publisher the tokens match: octo-org/demo, release.yml, environment release."""
    from trustpub.registry import cli  # noqa: PLC0415

    db = ["--database-url", database_url]
    assert cli.main(["project", "add", "bench-pkg", *db]) == 0
    assert (
        cli.main(
            [
                "publisher",
                "add",
                "github",
                "--project",
                "bench-pkg",
                *PUBLISHER,
                *db,
            ]
        )
        == 0
    )


@dataclass
class Bench:
    """A running stack as ``make bench`` starts it."""

    stack: Stack
    issuer: DevIssuer
    nats: NatsServer
    pg: PostgresServer

    @property
    def mint_url(self) -> str:
        return f"{self.stack.base_url}/_/oidc/mint-token"

    def pids(self) -> dict[str, int]:
        """The services' and nats-server's process ids, and ``postgres``: the process that runs
        the postmaster (whose backends are its descendants)."""
        assert self.nats.proc is not None
        assert self.pg.proc is not None
        pids = {k: p.popen.pid for k, p in self.stack.procs.items()}
        pids["nats-server"] = self.nats.proc.pid
        pids["postgres"] = self.pg.proc.pid
        return pids


@contextlib.contextmanager
def bench_stack(*, issuers_toml_extra: str = "") -> Iterator[Bench]:
    """NATS, PostgreSQL (default durability), a local issuer with the benchmark's publisher
    registered, and the five services, in a temporary directory; all stopped when the block
    ends. ``issuers_toml_extra`` is appended to the local issuer's entry of the issuers file."""
    with tempfile.TemporaryDirectory(prefix="trustpub-bench-") as tmp:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        pg = PostgresServer(root / "pg").start()
        issuer = DevIssuer()
        try:
            from trustpub.registry.migrations import apply  # noqa: PLC0415

            db_url = pg.url
            asyncio.run(apply(db_url))
            register(db_url)
            with issuer.serve_in_thread():
                (root / "issuers.toml").write_text(
                    issuer.issuers_toml() + issuers_toml_extra + offline_builtins_toml(issuer)
                )
                stack = Stack(
                    {
                        "TRUSTPUB_NATS_URL": nats.url,
                        "TRUSTPUB_DATABASE_URL": db_url,
                        "TRUSTPUB_ISSUERS_FILE": str(root / "issuers.toml"),
                        "TRUSTPUB_AUDIENCE": AUDIENCE,
                        "TRUSTPUB_MINTER_KEY_FILE": str(root / "minter.jwk"),
                        "TRUSTPUB_LOG_LEVEL": "warning",
                        "TRUSTPUB_RATE_LIMIT": "0",  # thousands of requests/s from one address
                    },
                    log_dir=root / "logs",
                )
                stack.start_all()
                try:
                    yield Bench(stack, issuer, nats, pg)
                finally:
                    stack.stop_all()
        finally:
            pg.stop()
            nats.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="trustpub mint-token benchmark")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    rs256 = calibrate()
    print(
        f"calibration: jwcrypto RS256 verify {rs256:,.0f}/s "
        f"(reference machine: {REFERENCE['rs256_verify_per_s']:,}/s, machine speed ratio "
        f"{rs256 / REFERENCE['rs256_verify_per_s']:.2f})",
        flush=True,
    )

    with bench_stack() as bench:
        results = run_levels(bench, levels, args.seconds)
    out = {"calibration_rs256_verify_per_s": round(rs256), "reference": REFERENCE, "results": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def run_levels(bench: Bench, levels: list[int], seconds: float) -> list[dict[str, Any]]:
    url, issuer, pg = bench.mint_url, bench.issuer, bench.pg
    asyncio.run(drive(url, make_tokens(issuer, 200), 8, 2))  # warm-up: keys fetched, pools filled
    pids = bench.pids()
    del pids["postgres"]  # its backends are counted as a tree below
    assert pg.proc is not None
    results = []
    for conc in levels:
        need = int(3000 * seconds) if conc > 1 else int(800 * seconds)
        print(f"signing {need:,} fresh tokens for {conc} in flight ...", flush=True)
        tokens = make_tokens(issuer, need)
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        pg_before = tree_cpu(pg.proc.pid)
        driver_before = time.process_time()
        res = asyncio.run(drive(url, tokens, conc, seconds))
        n = max(res["exchanges"], 1)
        cpu = {k: round((cpu_seconds(p) - before[k]) * 1e6 / n) for k, p in pids.items()}
        pg_after = tree_cpu(pg.proc.pid)
        cpu["postgres"] = round((pg_after - pg_before) * 1e6 / n)
        cpu["bench-client"] = round((time.process_time() - driver_before) * 1e6 / n)
        res["cpu_us_per_exchange"] = cpu
        res["cpu_us_per_exchange_total_excl_client"] = sum(v for k, v in cpu.items() if k != "bench-client")
        if conc == 32:
            res["ratio_vs_prototype_1443_per_s"] = round(
                res["exchanges_per_s"] / REFERENCE["exchanges_per_s_32"], 2
            )
        results.append(res)
        print(json.dumps(res), flush=True)
    return results


if __name__ == "__main__":
    main()
