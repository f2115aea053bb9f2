"""``make faults``: the fault suite of issue 11, and the harness ``tests/faults`` runs.

A real stack (its own NATS with TLS and the generated authorization, its own PostgreSQL with
default durability, the five services as processes, a local issuer) takes a steady open-loop
load of fresh OIDC tokens over loopback while one fault is injected: a service, PostgreSQL or
NATS killed (-9) and restarted, a service stopped (SIGSTOP) past the request deadline, an
exclusive lock held on ``used_tokens`` past the deadline, a service SIGTERM'd (drain) and
restarted, one of two verifiers killed. The harness restarts what it killed, as Kubernetes
would; restarting is part of the fault. Then:

(a) every token that was not answered 200 is presented again, concurrently, following
    Retry-After, for up to ``retry_budget`` seconds each;
(b) PostgreSQL is asked: at most one mint record per OIDC token; every 200's upload token is
    a mint record of its own OIDC token; no mint record of a token that never got a 200, even
    after retries (an unrecoverable orphan); every answer's exchange id has exactly one audit
    row ``exchange.succeeded`` or ``exchange.failed`` (polled: the registry writes them from
    the gateway's events); every mint record has its ``mint.granted`` row; once the schema
    has ``mints.delivered_at``, every delivered mint is marked so; and a delivered token
    presented again (every one whose mark is missing, and a sample) is refused as reused;
(c) every service's ``/readyz`` is 200 again without help, and a fresh exchange mints.

``python -m bench.faults`` runs every fault at a higher rate (``--rate``, 150/s by default)
and the production deadline, and prints the table: fault | answers (200 / 503 / other) during
the window | committed but answered non-200 before retries | recovered by retry |
unrecoverable orphans | duplicates | audit rows missing / duplicated | ready again after.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import io
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from deploy.devstack.issuer import DevIssuer, github_claims, offline_builtins_toml
from deploy.devstack.servers import DevServerError, NatsServer, PostgresServer
from deploy.devstack.stack import SERVICES, Stack

from bench.exchange import PUBLISHER
from trustpub.gateway.errors import EXCHANGE_ID_RESPONSE_HEADER

AUDIENCE = "trustpub-faults"
MINT_PATH = "/_/oidc/mint-token"
# The audit rows of an HTTP answer of mint-token: exactly one per answer.
ANSWER_KINDS = ("exchange.succeeded", "exchange.failed")
GRANT_KIND = "mint.granted"
PROJECT = "faults-pkg"
# A 503 or no answer at all is worth trying again; a 422 is final.
RETRYABLE = frozenset({0, 429, 502, 503, 504})
# Tokens signed ahead are used within this many seconds (they are valid for 300, and a retry
# may come 30 s later).
TOKEN_FRESH_S = 120.0
# How late the harness's own event loop may run before its figures are suspect (a machine too
# busy to drive the load is not a finding about trustpub).
LOOP_LAG_WARN_S = 0.5


@dataclass(frozen=True)
class FaultSettings:
    """How hard and how long: the load, the deadline and the length of each fault."""

    rate: float = 150.0  # exchanges per second, open loop
    deadline: float = 5.0  # TRUSTPUB_REQUEST_TIMEOUT
    pause: float = 0.0  # SIGSTOP length; 0: deadline + 3 s
    lock_hold: float = 0.0  # seconds the lock on used_tokens is held; 0: twice the deadline
    before: float = 2.0  # load before the fault
    after: float = 2.0  # load after every service is ready again
    ready_budget: float = 60.0  # how long services get to be ready again on their own
    retry_budget: float = 30.0  # how long each token is retried
    audit_budget: float = 30.0  # how long the audit rows (and delivery marks) get to appear
    drain_grace: float = 1.0  # TRUSTPUB_DRAIN_GRACE
    max_in_flight: int = 4000  # open loop, but bounded: past this a tick is skipped
    retry_concurrency: int = 64  # retried requests in flight at once

    @property
    def stop_for(self) -> float:
        return self.pause or self.deadline + 3.0

    @property
    def lock_for(self) -> float:
        return self.lock_hold or 2.0 * self.deadline

    @property
    def client_timeout(self) -> float:
        """A client waits out a stopped gateway: past the longest pause, plus the deadline."""
        return max(self.stop_for, self.lock_for) + self.deadline + 5.0


# The test suite's: two loaded cores cope, and a fault takes a few seconds.
TEST_SETTINGS = FaultSettings(
    rate=40.0, deadline=2.0, pause=3.2, lock_hold=3.5, before=1.0, after=1.0, drain_grace=0.3
)


# -- one exchange ---------------------------------------------------------------------------


@dataclass
class Answer:
    """What the client saw for one presentation of a token."""

    status: int  # 0: no HTTP answer (see code)
    code: str  # the error code; without an answer: refused, disconnected, reset, timeout, ...
    exchange_id: str = ""
    upload_jti: str = ""  # of a 200: the upload token's jti (its mint record's id)
    retry_after: float | None = None
    sent: float = 0.0  # monotonic
    answered: float = 0.0

    @property
    def category(self) -> str:
        if self.status == 200:
            return "200"
        if self.status == 503:
            return "503"
        return "other"

    @property
    def label(self) -> str:
        return f"{self.status} {self.code}".strip() if self.status else f"no answer ({self.code})"


@dataclass
class TokenRun:
    """One fresh OIDC token: its first presentation during the window, then its retries."""

    token: str
    key: str  # the OIDC token's jti: mints.token_key
    first: Answer | None = None
    retries: list[Answer] = field(default_factory=list)

    @property
    def answers(self) -> list[Answer]:
        return ([self.first] if self.first else []) + self.retries

    @property
    def served(self) -> Answer | None:
        return next((a for a in self.answers if a.status == 200), None)


def upload_jti(upload_token: str) -> str:
    """The ``jti`` of an upload token (``<prefix><compact JWS>``), read without verifying."""
    try:
        payload = upload_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims.get("jti", ""))
    except (IndexError, ValueError, AttributeError):
        return ""


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


async def exchange(session: aiohttp.ClientSession, url: str, token: str) -> Answer:
    """POST the token to mint-token; never raises."""
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        async with session.post(url, json={"token": token}) as resp:
            raw = await resp.read()
            answer = Answer(
                status=resp.status,
                code="",
                exchange_id=resp.headers.get(EXCHANGE_ID_RESPONSE_HEADER, ""),
                retry_after=_retry_after(resp.headers.get("Retry-After")),
                sent=sent,
            )
    except aiohttp.ClientConnectorError:
        return Answer(0, "refused", sent=sent, answered=loop.time())
    except aiohttp.ServerDisconnectedError:
        return Answer(0, "disconnected", sent=sent, answered=loop.time())
    except TimeoutError:
        return Answer(0, "timeout", sent=sent, answered=loop.time())
    except aiohttp.ClientOSError as exc:
        what = "reset" if exc.errno == errno.ECONNRESET else f"{type(exc).__name__} errno {exc.errno}"
        return Answer(0, what, sent=sent, answered=loop.time())
    except aiohttp.ClientError as exc:
        return Answer(0, type(exc).__name__, sent=sent, answered=loop.time())
    answer.answered = loop.time()
    try:
        body = json.loads(raw)
        if answer.status == 200:
            answer.upload_jti = upload_jti(str(body["token"]))
        else:
            answer.code = str(body["errors"][0]["code"])
    except (ValueError, KeyError, IndexError, TypeError):
        answer.code = "unparsable-body"
    return answer


# -- the stack ------------------------------------------------------------------------------


@dataclass
class Resumed:
    """What a fault's action reports: when the harness began to undo it (restart, SIGCONT,
    release), and anything it saw on the way (a drain's exit code)."""

    at: float
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _split(key: str) -> tuple[str, str]:
    """A process key of the stack (``verifier-2``) as (service, replica suffix)."""
    name = next(s for s in SERVICES if key.startswith(s))
    return name, key[len(name) :]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _quietly(command: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a CLI command without its report on stdout (only while the stack starts)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return command(argv)


class FaultStack:
    """NATS, PostgreSQL, the issuer and the five services, with the means to break them."""

    def __init__(self, settings: FaultSettings, *, log_dir: Path | None = None, keep: bool = False) -> None:
        self.settings = settings
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="trustpub-faults-"))
        self.log_dir = log_dir or self.root / "logs"
        self.issuer = DevIssuer()
        self.nats = NatsServer(self.root / "nats")
        self.pg = PostgresServer(self.root / "pg")
        self.stack: Stack | None = None
        self._served = contextlib.ExitStack()
        self._signed: list[tuple[float, TokenRun]] = []  # (monotonic signing time, token)

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> FaultStack:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def _start(self) -> None:
        from trustpub.registry import cli  # noqa: PLC0415  (the registry's own tool)
        from trustpub.registry.migrations import apply  # noqa: PLC0415

        self.log_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.nats.start, self.log_dir / "nats.log")
        await asyncio.to_thread(self.pg.start)
        await apply(self.pg.url)
        db = ["--database-url", self.pg.url]
        for argv in (
            ["project", "add", PROJECT, *db],
            ["publisher", "add", "github", "--project", PROJECT, *PUBLISHER, *db],
        ):
            if await asyncio.to_thread(_quietly, cli.main, argv) != 0:
                raise DevServerError(f"trustpub {' '.join(argv[:3])} failed")
        self._served.enter_context(self.issuer.serve_in_thread())
        issuers = self.root / "issuers.toml"
        issuers.write_text(self.issuer.issuers_toml() + offline_builtins_toml(self.issuer))
        s = self.settings
        self.stack = Stack(
            {
                "TRUSTPUB_NATS_URL": self.nats.url,
                "TRUSTPUB_DATABASE_URL": self.pg.url,
                "TRUSTPUB_ISSUERS_FILE": str(issuers),
                "TRUSTPUB_AUDIENCE": AUDIENCE,
                "TRUSTPUB_REQUEST_TIMEOUT": f"{s.deadline:g}",
                "TRUSTPUB_DRAIN_GRACE": f"{s.drain_grace:g}",
                "TRUSTPUB_RATE_LIMIT": "0",  # the load comes from one address; 429s are not the point
                "TRUSTPUB_LOG_LEVEL": "info",
            },
            log_dir=self.log_dir,
        )
        await asyncio.to_thread(self.stack.start_all, 60)

    async def close(self) -> None:
        for proc in list(self.stack.procs.values()) if self.stack else []:
            with contextlib.suppress(OSError):
                os.kill(proc.popen.pid, signal.SIGCONT)  # a stopped process cannot drain
                proc.popen.send_signal(signal.SIGTERM)  # all drain at once; stop_all waits
        if self.stack is not None:
            await asyncio.to_thread(self.stack.stop_all)
        self._served.close()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.pg.stop)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.nats.stop)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def services(self) -> Stack:
        assert self.stack is not None, "not started"
        return self.stack

    @property
    def url(self) -> str:
        return f"{self.services.base_url}{MINT_PATH}"

    @property
    def db_url(self) -> str:
        return self.pg.url

    def fresh_token(self) -> TokenRun:
        """A token no one presented yet: signed ahead (:meth:`presign`), or now."""
        while self._signed:
            signed_at, run = self._signed.pop()
            if time.monotonic() - signed_at < TOKEN_FRESH_S:
                return run
        return self._sign()

    def _sign(self) -> TokenRun:
        key = str(uuid.uuid4())
        return TokenRun(self.issuer.token(github_claims(AUDIENCE, issuer=self.issuer.issuer, jti=key)), key)

    async def presign(self, n: int) -> None:
        """Sign tokens ahead, up to ``n`` young enough, so that the load spends no CPU on
        RSA signatures (about 1 ms each) while it runs."""
        now = time.monotonic()
        self._signed = [(t, r) for t, r in self._signed if now - t < TOKEN_FRESH_S / 2]
        missing = n - len(self._signed)
        if missing > 0:
            fresh = await asyncio.to_thread(lambda: [self._sign() for _ in range(missing)])
            self._signed = [(now, r) for r in fresh] + self._signed

    # -- services --------------------------------------------------------------------------

    def pid(self, key: str) -> int:
        return self.services.procs[key].popen.pid

    async def signal_and_wait(self, key: str, sig: signal.Signals, timeout: float = 30.0) -> int:
        """Send ``sig`` to the service and wait until it exits; its exit status (-9: killed,
        also after ``timeout``)."""
        popen = self.services.procs[key].popen
        popen.send_signal(sig)
        try:
            return await asyncio.to_thread(popen.wait, timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            await asyncio.to_thread(popen.wait, 10)
            return -9

    def restart(self, key: str) -> None:
        """Start the service again (a new process, a new ops port), without waiting."""
        name, replica = _split(key)
        self.services.start(name, replica=replica, wait=False)

    async def readiness(self, session: aiohttp.ClientSession) -> dict[str, bool]:
        async def one(key: str) -> bool:
            try:
                async with session.get(f"{self.services.ops_url(key)}/readyz") as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        keys = list(self.services.procs)
        return dict(zip(keys, await asyncio.gather(*(one(k) for k in keys)), strict=True))

    async def wait_ready(self, budget: float) -> tuple[float | None, list[str], list[str]]:
        """(seconds until every service was ready, or None; those that were not; those whose
        process exited)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        state: dict[str, bool] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                exited = [k for k, p in self.services.procs.items() if p.popen.poll() is not None]
                state = await self.readiness(session)
                if all(state.values()) and not exited:
                    return loop.time() - started, [], []
                if loop.time() - started > budget:
                    return None, sorted(k for k, ok in state.items() if not ok), exited
                await asyncio.sleep(0.1)

    async def heal(self) -> None:
        """Between faults: everything running and ready, whatever the last fault left behind."""
        if self.nats.proc is None or self.nats.proc.poll() is not None:
            await asyncio.to_thread(self.nats.start, self.log_dir / "nats.log")
        if self.pg.proc is None or self.pg.proc.poll() is not None:
            await self.start_postgres()
        for key, proc in list(self.services.procs.items()):
            with contextlib.suppress(OSError):
                os.kill(proc.popen.pid, signal.SIGCONT)
            if proc.popen.poll() is not None:
                self.restart(key)
        _, not_ready, exited = await self.wait_ready(self.settings.ready_budget)
        for key in {*not_ready, *exited}:
            await self.signal_and_wait(key, signal.SIGKILL)
            self.restart(key)
        if not_ready or exited:
            seconds, not_ready, exited = await self.wait_ready(self.settings.ready_budget)
            if seconds is None:
                raise DevServerError(f"not ready even after a restart: {not_ready + exited}")

    async def add_replica(self, key: str) -> None:
        name, replica = _split(key)
        self.services.start(name, replica=replica, wait=False)
        seconds, not_ready, exited = await self.wait_ready(self.settings.ready_budget)
        if seconds is None:
            raise DevServerError(f"replica {key} not ready: {not_ready + exited}")

    async def remove_replica(self, key: str) -> None:
        if key in self.services.procs:
            await self.signal_and_wait(key, signal.SIGTERM)
            del self.services.procs[key]

    # -- PostgreSQL and NATS ---------------------------------------------------------------

    async def kill_postgres(self) -> None:
        """SIGKILL the postmaster and every backend at once, as a container kill would."""
        assert self.pg.proc is not None
        pidfile = self.pg.data_dir / "postmaster.pid"
        postmaster = int(pidfile.read_text().split()[0])
        victims = [postmaster, *_children(postmaster)]
        for pid in victims:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(self.pg.proc.wait, 30)  # runuser, once its child is gone
        for _ in range(1500):  # 30 s at most: killed processes go at once
            if not any(_alive(pid) for pid in victims):
                break
            await asyncio.sleep(0.02)
        self.pg.proc = None

    async def start_postgres(self) -> None:
        """Start PostgreSQL again on its port and data (crash recovery runs first)."""
        for attempt in range(5):
            try:
                await asyncio.to_thread(self.pg.start)
            except DevServerError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5)  # a killed backend may still hold the shared memory
            else:
                return

    async def kill_nats(self) -> None:
        assert self.nats.proc is not None
        self.nats.proc.kill()
        await asyncio.to_thread(self.nats.proc.wait, 30)
        self.nats.proc = None

    async def start_nats(self) -> None:
        """NATS again on its port, with its JetStream store and configuration."""
        await asyncio.to_thread(self.nats.start, self.log_dir / "nats.log")


# -- faults ---------------------------------------------------------------------------------


Action = Callable[[FaultStack], Awaitable[Resumed]]


@dataclass(frozen=True)
class Fault:
    id: str  # the test id
    label: str  # the table's; {pause}, {lock} and {deadline} are filled in
    act: Action
    replicas: tuple[str, ...] = ()  # service copies started for this fault only

    def describe(self, s: FaultSettings) -> str:
        return self.label.format(pause=f"{s.stop_for:g}", lock=f"{s.lock_for:g}", deadline=f"{s.deadline:g}")


def _now() -> float:
    return asyncio.get_running_loop().time()


def kill_and_restart(key: str) -> Action:
    async def act(fs: FaultStack) -> Resumed:
        await fs.signal_and_wait(key, signal.SIGKILL)
        resumed = Resumed(_now())
        fs.restart(key)
        return resumed

    return act


def term_and_restart(key: str) -> Action:
    async def act(fs: FaultStack) -> Resumed:
        started = _now()
        code = await fs.signal_and_wait(key, signal.SIGTERM)
        resumed = Resumed(_now(), {"drain_s": round(_now() - started, 2), "exit_code": code})
        if code != 0:
            resumed.problems.append(f"{key} exited with {code} on SIGTERM (a clean drain exits 0)")
        fs.restart(key)
        return resumed

    return act


def stop_and_continue(key: str) -> Action:
    async def act(fs: FaultStack) -> Resumed:
        pid = fs.pid(key)
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(fs.settings.stop_for)
        finally:
            os.kill(pid, signal.SIGCONT)
        return Resumed(_now())

    return act


async def lock_used_tokens(fs: FaultStack) -> Resumed:
    conn = await asyncpg.connect(fs.db_url, timeout=10)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE used_tokens IN ACCESS EXCLUSIVE MODE")
        locked = _now()
        await asyncio.sleep(fs.settings.lock_for)
        await tx.rollback()
        return Resumed(_now(), {"locked_s": round(_now() - locked, 2)})
    finally:
        await conn.close()


async def kill_postgres(fs: FaultStack) -> Resumed:
    await fs.kill_postgres()
    resumed = Resumed(_now())
    await fs.start_postgres()
    resumed.notes["postgres_start_s"] = round(_now() - resumed.at, 2)
    return resumed


async def kill_nats(fs: FaultStack) -> Resumed:
    await fs.kill_nats()
    resumed = Resumed(_now())
    await fs.start_nats()
    return resumed


FAULTS: tuple[Fault, ...] = (
    *(Fault(f"kill-{s}", f"{s} killed (-9) and restarted", kill_and_restart(s)) for s in SERVICES),
    Fault("kill-postgres", "PostgreSQL killed (-9) and restarted", kill_postgres),
    Fault("kill-nats", "NATS killed (-9) and restarted", kill_nats),
    *(Fault(f"stop-{s}", f"{s} stopped (SIGSTOP) for {{pause}} s", stop_and_continue(s)) for s in SERVICES),
    Fault("lock-used-tokens", "exclusive lock on used_tokens for {lock} s", lock_used_tokens),
    *(Fault(f"term-{s}", f"{s} SIGTERM'd (drain) and restarted", term_and_restart(s)) for s in SERVICES),
    Fault(
        "kill-one-of-two-verifiers",
        "one of two verifiers killed (-9) and restarted",
        kill_and_restart("verifier"),
        replicas=("verifier-2",),
    ),
)


# -- one run --------------------------------------------------------------------------------


@dataclass
class FaultResult:
    fault: Fault
    settings: FaultSettings
    runs: list[TokenRun]
    window_s: float = 0.0  # how long tokens were sent
    skipped: int = 0  # ticks not sent: max_in_flight requests were outstanding
    ready_s: float | None = None  # from the harness's restart / SIGCONT / release
    fault_s: float = 0.0  # from injection to the harness's restart / SIGCONT / release
    not_ready: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    probe: Answer | None = None
    # from PostgreSQL
    mints: dict[str, list[str]] = field(default_factory=dict)  # token key -> mint ids
    committing: dict[str, str] = field(default_factory=dict)  # mint id -> the exchange that committed it
    before_retries: set[str] = field(default_factory=set)  # token keys with a mint record then
    audit: dict[str, int] = field(default_factory=dict)  # exchange id -> answer rows
    grants_unaudited: list[str] = field(default_factory=list)
    undelivered_marks: list[str] | None = None  # None: the schema has no delivered_at yet
    audit_wait_s: float = 0.0
    replays: list[TokenRun] = field(default_factory=list)  # delivered tokens presented again
    phases: dict[str, float] = field(default_factory=dict)  # seconds: load, retries, checks
    loop_lag_s: float = 0.0  # the harness's own event loop, at worst, during the load

    # -- what the client saw --

    def first_answers(self) -> Counter[str]:
        return Counter(r.first.category for r in self.runs if r.first)

    def others(self) -> Counter[str]:
        return Counter(r.first.label for r in self.runs if r.first and r.first.category == "other")

    def after_ready_failures(self, ready_at: float) -> int:
        return sum(
            1 for r in self.runs if r.first and r.first.sent > ready_at + 0.5 and r.first.status != 200
        )

    # -- what was lost --

    def committed_unanswered(self) -> list[TokenRun]:
        """Committed before the retries (a mint record when the window ended, or one that the
        window's own exchange committed later) but answered other than 200 in the window."""
        return [
            r
            for r in self.runs
            if r.first is not None
            and r.first.status != 200
            and (
                r.key in self.before_retries
                or any(self.committing.get(m) == r.first.exchange_id != "" for m in self.mints.get(r.key, []))
            )
        ]

    def recovered(self) -> list[TokenRun]:
        return [
            r
            for r in self.committed_unanswered()
            if (served := r.served) is not None and served.upload_jti in self.mints[r.key]
        ]

    def orphans(self) -> list[TokenRun]:
        """A mint record, and its client never got a 200, even after retries."""
        return [r for r in self.runs if self.mints.get(r.key) and r.served is None]

    def duplicates(self) -> list[TokenRun]:
        return [r for r in self.runs if len(self.mints.get(r.key, [])) > 1]

    def unrecorded(self) -> list[TokenRun]:
        """A 200 whose upload token is not a mint record of its own OIDC token."""
        return [
            r
            for r in self.runs
            if (served := r.served) is not None and served.upload_jti not in self.mints.get(r.key, [])
        ]

    def unserved(self) -> list[TokenRun]:
        """Never committed, and still no 200 after retries: the stack did not serve again."""
        return [r for r in self.runs if not self.mints.get(r.key) and r.served is None]

    def answers(self) -> list[Answer]:
        """Every HTTP answer: the window's, the retries', the replays'."""
        return [a for r in [*self.runs, *self.replays] for a in r.answers if a.status]

    def answered_ids(self) -> list[str]:
        return [a.exchange_id for a in self.answers() if a.exchange_id]

    def unidentified(self) -> int:
        """HTTP answers without the exchange-id header."""
        return sum(1 for a in self.answers() if not a.exchange_id)

    def reissued(self) -> list[TokenRun]:
        """Delivered tokens that, presented again, were not refused as reused."""
        return [r for r in self.replays if not r.answers or r.answers[-1].code != "invalid-reuse-token"]

    def audit_missing(self) -> list[str]:
        return [x for x in self.answered_ids() if not self.audit.get(x)]

    def audit_duplicated(self) -> list[str]:
        return [x for x in self.answered_ids() if self.audit.get(x, 0) > 1]

    def violations(self) -> list[str]:
        """Every invariant of issue 11 this run broke, each said once with a few examples."""
        out = list(self.problems)

        def add(items: Sequence[Any], what: str) -> None:
            if items:
                shown = [i.key if isinstance(i, TokenRun) else i for i in items[:3]]
                out.append(f"{len(items)} {what}, e.g. {shown}")

        add(self.duplicates(), "OIDC tokens with more than one mint record")
        add(self.unrecorded(), "200s whose upload token is not a mint record of their OIDC token")
        add(
            [f"{r.key} ({r.answers[-1].label})" for r in self.orphans()],
            "unrecoverable orphans (a mint record; no 200 even after retries)",
        )
        add(
            [f"{r.key} ({r.answers[-1].label})" for r in self.unserved()],
            "tokens never minted and not served after retries",
        )
        add(self.audit_missing(), "answered exchange ids without their audit row")
        add(
            [f"{x} ({self.audit[x]} rows)" for x in self.audit_duplicated()],
            "answered exchange ids with more than one audit row",
        )
        if self.unidentified():
            out.append(f"{self.unidentified()} answers without {EXCHANGE_ID_RESPONSE_HEADER}")
        add(self.grants_unaudited, f"mint records without their {GRANT_KIND} audit row")
        add(self.undelivered_marks or [], "mint records delivered (a 200) but without delivered_at")
        add(
            [f"{r.key} ({r.answers[-1].label if r.answers else 'not sent'})" for r in self.reissued()],
            "delivered tokens not refused (422 invalid-reuse-token) when presented again",
        )
        if self.ready_s is None:
            out.append(
                f"not ready again within {self.settings.ready_budget:g} s: "
                f"not ready {self.not_ready}, exited {self.exited}"
            )
        if self.probe is not None and self.probe.status != 200:
            out.append(f"a fresh exchange after recovery was answered {self.probe.label}")
        return out

    def harness_lagged(self) -> str:
        """A warning when the harness itself could not keep time (a machine too busy)."""
        if self.loop_lag_s <= LOOP_LAG_WARN_S:
            return ""
        return (
            f"the harness's event loop ran up to {self.loop_lag_s:.1f} s late during the load: "
            "this machine was too busy to drive it, its figures are suspect"
        )

    # -- the report --

    def row(self) -> list[str]:
        answers = self.first_answers()
        missing, duplicated = len(self.audit_missing()), len(self.audit_duplicated())
        return [
            self.fault.describe(self.settings),
            f"{answers['200']} / {answers['503']} / {answers['other']}",
            str(len(self.committed_unanswered())),
            str(len(self.recovered())),
            str(len(self.orphans())),
            str(len(self.duplicates())),
            f"{missing} / {duplicated}",
            "never" if self.ready_s is None else f"{self.ready_s:.1f} s",
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "fault": self.fault.id,
            "sent": len(self.runs),
            "rate_per_s": round(len(self.runs) / self.window_s, 1) if self.window_s else 0,
            "skipped": self.skipped,
            "answers": dict(self.first_answers()),
            "other": dict(self.others()),
            "committed_answered_non_200": len(self.committed_unanswered()),
            "recovered_by_retry": len(self.recovered()),
            "retried": sum(1 for r in self.runs if r.retries),
            "retry_outcomes": dict(Counter(r.answers[-1].label for r in self.runs if r.retries)),
            "orphans": len(self.orphans()),
            "duplicates": len(self.duplicates()),
            "unserved": len(self.unserved()),
            "audit_missing": len(self.audit_missing()),
            "audit_duplicated": len(self.audit_duplicated()),
            "grants_unaudited": len(self.grants_unaudited),
            "undelivered_marks": None if self.undelivered_marks is None else len(self.undelivered_marks),
            "replayed": len(self.replays),
            "replay_outcomes": dict(Counter(r.answers[-1].label for r in self.replays if r.answers)),
            "fault_s": round(self.fault_s, 2),
            "ready_s": None if self.ready_s is None else round(self.ready_s, 2),
            "audit_wait_s": round(self.audit_wait_s, 2),
            "phases_s": {k: round(v, 1) for k, v in self.phases.items()},
            "harness_loop_lag_s": round(self.loop_lag_s, 2),
            **self.notes,
            "violations": self.violations(),
        }


async def _drive(
    fs: FaultStack, session: aiohttp.ClientSession, runs: list[TokenRun], stop: asyncio.Event
) -> int:
    """Open loop at ``rate``: one fresh token per tick, whatever is still in flight (up to
    ``max_in_flight``); returns the ticks skipped. Waits for every request it sent."""
    s = fs.settings
    loop = asyncio.get_running_loop()
    interval = 1.0 / s.rate
    tick = loop.time()
    in_flight: set[asyncio.Task[None]] = set()
    skipped = 0

    async def first(run: TokenRun) -> None:
        run.first = await exchange(session, fs.url, run.token)

    while not stop.is_set():
        delay = tick - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
            continue
        tick = max(tick + interval, loop.time() - 1.0)  # held up for long: no burst to catch up
        if len(in_flight) >= s.max_in_flight:
            skipped += 1
            continue
        run = fs.fresh_token()
        runs.append(run)
        task = asyncio.create_task(first(run))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    return skipped


async def _loop_lag(stop: asyncio.Event) -> float:
    """The longest the harness's event loop ran late (a 50 ms timer) until ``stop``."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0.05)
        worst = max(worst, loop.time() - before - 0.05)
    return worst


async def retry(fs: FaultStack, session: aiohttp.ClientSession, runs: Sequence[TokenRun]) -> None:
    """Present every token that got no 200 again, as a client would: after Retry-After (or
    half a second without an answer), until a 200 or a final refusal, for ``retry_budget``."""
    s = fs.settings
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(s.retry_concurrency)

    async def one(run: TokenRun) -> None:
        started = loop.time()
        last = run.first
        while last is None or last.status in RETRYABLE:
            left = s.retry_budget - (loop.time() - started)
            if left <= 0:
                return
            wait = 0.0 if last is None else (last.retry_after or 0.5) * random.uniform(1.0, 1.2)
            await asyncio.sleep(min(wait, left))
            async with gate:
                last = await exchange(session, fs.url, run.token)
            run.retries.append(last)

    await asyncio.gather(*(one(r) for r in runs if r.served is None))


async def _columns(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = $1", table)
    return {str(r["column_name"]) for r in rows}


async def mint_records(fs: FaultStack, keys: Sequence[str]) -> list[asyncpg.Record]:
    """(token_key, id, exchange_id) of the mint records of these OIDC tokens."""
    conn = await asyncpg.connect(fs.db_url, timeout=10)
    try:
        return list(
            await conn.fetch(
                "SELECT token_key, id::text AS id, exchange_id FROM mints "
                "WHERE issuer = $1 AND token_key = ANY($2::text[])",
                fs.issuer.issuer,
                list(keys),
            )
        )
    finally:
        await conn.close()


_ANSWER_ROWS = (
    "SELECT exchange_id, count(*) AS n FROM audit_events "
    "WHERE exchange_id = ANY($1::text[]) AND kind = ANY($2::text[]) GROUP BY exchange_id"
)
_UNMARKED = "SELECT id::text AS id FROM mints WHERE id = ANY($1::uuid[]) AND delivered_at IS NULL"
# Delivered tokens presented again besides those whose delivery is not marked: enough to see
# that a delivered token is refused, few enough to keep a fault short.
REPLAY_SAMPLE = 20


async def _poll(
    fs: FaultStack, conn: asyncpg.Connection, ids: Sequence[str], delivered: Sequence[str] | None
) -> tuple[dict[str, int], list[str] | None, float]:
    """Until each of ``ids`` has an audit row and each ``delivered`` mint its delivery mark (None:
    not asked), or ``audit_budget`` passed: (rows per exchange id, mints still unmarked, wait)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        rows = await conn.fetch(_ANSWER_ROWS, list(ids), list(ANSWER_KINDS))
        audit = {r["exchange_id"]: int(r["n"]) for r in rows}
        unmarked = None if delivered is None else [r["id"] for r in await conn.fetch(_UNMARKED, delivered)]
        if len(audit) == len(set(ids)) and not unmarked:
            break
        if loop.time() - started > fs.settings.audit_budget:
            break
        await asyncio.sleep(0.25)
    return audit, unmarked, loop.time() - started


async def check(fs: FaultStack, session: aiohttp.ClientSession, result: FaultResult) -> None:
    """Fill ``result`` from PostgreSQL: mint records and their grant rows; then, polled, one
    audit row per answer and the delivery marks (once the schema has ``delivered_at``); then
    present delivered tokens again (every one whose delivery is not marked, and a sample):
    each must be refused, and each of those answers audited too."""
    for row in await mint_records(fs, [r.key for r in result.runs]):
        result.mints.setdefault(row["token_key"], []).append(row["id"])
        result.committing[row["id"]] = row["exchange_id"]
    mint_ids = [m for ms in result.mints.values() for m in ms]
    delivered = [s.upload_jti for r in result.runs if (s := r.served) and s.upload_jti in mint_ids]
    conn = await asyncpg.connect(fs.db_url, timeout=10)
    try:
        granted = await conn.fetch(
            "SELECT mint_id::text AS id FROM audit_events WHERE kind = $1 AND mint_id = ANY($2::uuid[])",
            GRANT_KIND,
            mint_ids,
        )
        result.grants_unaudited = sorted(set(mint_ids) - {r["id"] for r in granted})
        marks = "delivered_at" in await _columns(conn, "mints")
        _, result.undelivered_marks, waited = await _poll(
            fs, conn, result.answered_ids(), delivered if marks else None
        )
        unmarked = set(result.undelivered_marks or [])
        served = [r for r in result.runs if r.served is not None]
        suspects = [r for r in served if r.served and r.served.upload_jti in unmarked]
        others = [r for r in served if r not in suspects]
        sample = random.sample(others, min(REPLAY_SAMPLE, len(others)))
        result.replays = [TokenRun(r.token, r.key) for r in suspects + sample]
        await retry(fs, session, result.replays)
        replayed = [a.exchange_id for r in result.replays for a in r.answers if a.exchange_id]
        _, _, waited_again = await _poll(fs, conn, replayed, None)
        result.audit_wait_s = waited + waited_again
        # Every answer has its row now (or never will); a second one (a late event) would
        # come within the time the registry takes to store a batch (the gateway's 0.2 s
        # batch, a fetch): wait that long, then count.
        await asyncio.sleep(1.0)
        rows = await conn.fetch(_ANSWER_ROWS, sorted(set(result.answered_ids())), list(ANSWER_KINDS))
        result.audit = {r["exchange_id"]: int(r["n"]) for r in rows}
    finally:
        await conn.close()


async def _window(fs: FaultStack, fault: Fault, session: aiohttp.ClientSession, result: FaultResult) -> float:
    """The load, with the fault injected ``before`` seconds in and ``after`` seconds of load
    once every service is ready again; returns when they were (0: never)."""
    s = fs.settings
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    started = loop.time()
    ready_at = 0.0
    driver = asyncio.create_task(_drive(fs, session, result.runs, stop))
    lag = asyncio.create_task(_loop_lag(stop))
    try:
        await asyncio.sleep(s.before)
        injected = loop.time()
        resumed = await fault.act(fs)
        result.fault_s = resumed.at - injected
        result.notes.update(resumed.notes)
        result.problems.extend(resumed.problems)
        waited, result.not_ready, result.exited = await fs.wait_ready(s.ready_budget)
        if waited is not None:
            ready_at = loop.time()
            result.ready_s = ready_at - resumed.at
            await asyncio.sleep(s.after)
    finally:
        stop.set()
        result.window_s = loop.time() - started
        result.skipped = await driver
        result.loop_lag_s = await lag
    result.phases["load"] = loop.time() - started
    return ready_at


async def run_fault(fs: FaultStack, fault: Fault) -> FaultResult:
    """One fault under load, then retries, checks and readiness: the result to judge."""
    s = fs.settings
    await fs.heal()
    for key in fault.replicas:
        await fs.add_replica(key)
    await fs.presign(int(s.rate * (s.before + max(s.stop_for, s.lock_for) + s.after + 5)))
    result = FaultResult(fault, s, [])
    loop = asyncio.get_running_loop()
    try:
        timeout = aiohttp.ClientTimeout(total=s.client_timeout)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            ready_at = await _window(fs, fault, session, result)
            committed = await mint_records(fs, [r.key for r in result.runs if r.served is None])
            result.before_retries = {row["token_key"] for row in committed}
            mark = loop.time()
            probe = fs.fresh_token()
            if result.ready_s is not None:
                result.notes["non_200_after_ready"] = result.after_ready_failures(ready_at)
                await asyncio.gather(retry(fs, session, [probe]), retry(fs, session, result.runs))
                result.probe = probe.answers[-1] if probe.answers else None
            else:
                await retry(fs, session, result.runs)
            result.phases["retries"] = loop.time() - mark
            mark = loop.time()
            await check(fs, session, result)
            result.phases["checks"] = loop.time() - mark
    finally:
        for key in fault.replicas:
            await fs.remove_replica(key)
    return result


# -- the report -----------------------------------------------------------------------------

HEADER = [
    "fault",
    "answers 200 / 503 / other",
    "committed, answered non-200",
    "recovered by retry",
    "unrecoverable orphans",
    "duplicates",
    "audit rows missing / duplicated",
    "ready again after",
]


def table(results: Sequence[FaultResult]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(r.row()) + " |" for r in results]
    return "\n".join(lines)


async def report(settings: FaultSettings, faults: Sequence[Fault], *, keep: bool) -> list[FaultResult]:
    fs = FaultStack(settings, keep=keep)
    print(f"starting the stack under {fs.root} ...", flush=True)
    await fs.start()
    results = []
    try:
        for fault in faults:
            print(f"{fault.id}: {fault.describe(settings)} ...", flush=True)
            result = await run_fault(fs, fault)
            results.append(result)
            print(json.dumps(result.summary()), flush=True)
    finally:
        await fs.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="trustpub's fault suite (issue 11), at a higher rate")
    parser.add_argument("--rate", type=float, default=FaultSettings.rate, help="exchanges/s, open loop")
    parser.add_argument("--deadline", type=float, default=FaultSettings.deadline, help="request deadline, s")
    parser.add_argument("--pause", type=float, default=0.0, help="SIGSTOP length (default: deadline + 3 s)")
    parser.add_argument("--lock", type=float, default=0.0, help="lock held, s (default: twice the deadline)")
    parser.add_argument("--before", type=float, default=FaultSettings.before, help="load before the fault, s")
    parser.add_argument("--after", type=float, default=FaultSettings.after, help="load after recovery, s")
    parser.add_argument("--faults", default="", help="comma-separated fault ids (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write every result here")
    parser.add_argument("--keep", action="store_true", help="keep the stack's directory (logs, data)")
    args = parser.parse_args()
    settings = replace(
        FaultSettings(),
        rate=args.rate,
        deadline=args.deadline,
        pause=args.pause,
        lock_hold=args.lock,
        before=args.before,
        after=args.after,
    )
    wanted = [f for f in args.faults.split(",") if f]
    unknown = set(wanted) - {f.id for f in FAULTS}
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(f.id for f in FAULTS)}")
    faults = [f for f in FAULTS if not wanted or f.id in wanted]
    started = time.monotonic()
    results = asyncio.run(report(settings, faults, keep=args.keep))
    print(
        f"\n{settings.rate:g} exchanges/s offered, deadline {settings.deadline:g} s, "
        f"{time.monotonic() - started:.0f} s in all\n"
    )
    print(table(results))
    for r in results:
        lagged = r.harness_lagged()
        if r.violations() or lagged:
            print(f"\n{r.fault.id}:")
        for v in r.violations():
            print(f"  - {v}")
        if lagged:
            print(f"  ! {lagged}")
    if args.json:
        args.json.write_text(json.dumps([r.summary() for r in results], indent=2))


if __name__ == "__main__":
    main()
