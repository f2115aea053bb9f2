"""Keeps a :class:`KeyCache` in step with the JetStream key-value bucket of key sets.

The jwks service writes each issuer's sealed :class:`KeySet` under ``base64url(issuer)``;
every verifier replica watches the bucket, so the hot path never asks another service for a
key. An entry whose seal does not hold, or that is stamped in the future, is refused
(runtime/keysets.py): logged, counted, never applied; so is a delete or purge.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from trustpub.messages.text import shown
from trustpub.runtime.keysets import KeySetRefused, open_bucket, unseal
from trustpub.runtime.seal import Seals
from trustpub.verifier.keys import KeyCache

log = structlog.get_logger("trustpub.verifier.feed")

# After the watch breaks (it should not: the ordered consumer survives reconnects), wait this
# long before watching again, so a persistent failure does not spin.
REWATCH_DELAY_S = 1.0
# The bucket is created by its writer, the jwks service; until it exists, look again this often.
BUCKET_POLL_S = 0.1
_DELETED = frozenset({"DEL", "PURGE"})


class BucketFeed:
    """Loads every key set once, then applies updates as they arrive."""

    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        cache: KeyCache,
        seals: Seals,
        refused: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._js = js
        self._bucket = bucket
        self._cache = cache
        self._seals = seals
        self._refused = refused
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self.loaded = False

    @property
    def healthy(self) -> bool:
        """True once the initial load finished, while the watch is running."""
        return self.loaded and self._task is not None and not self._task.done()

    async def start(self, *, timeout: float) -> None:
        """Load the bucket's current content, then keep watching in the background.

        Raises:
            TimeoutError: the current content did not arrive within ``timeout``.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        kv = await asyncio.wait_for(self._bucket_when_created(), timeout)
        self._watcher = await asyncio.wait_for(kv.watchall(), timeout)
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                entry = await self._watcher.updates(timeout=max(remaining, 0.001))  # type: ignore[no-untyped-call]
            except nats.errors.TimeoutError:
                msg = f"key sets of bucket {self._bucket} did not load within {timeout} s"
                raise TimeoutError(msg) from None
            if entry is None:  # the marker: everything stored so far was delivered
                break
            self._apply(entry)
        self.loaded = True
        log.info("keysets_loaded", bucket=self._bucket)
        self._task = asyncio.create_task(self._run())

    async def _bucket_when_created(self) -> KeyValue:
        # Verifiers only read the bucket: they may not create it (the generated permissions).
        waiting = False
        while True:
            try:
                return await open_bucket(self._js, self._bucket, create=False)
            except nats.js.errors.BucketNotFoundError:
                if not waiting:
                    # Once: a verifier started before any jwks service says what it waits for.
                    log.info("keysets_bucket_missing", bucket=self._bucket, waiting_for="the jwks service")
                    waiting = True
                await asyncio.sleep(BUCKET_POLL_S)

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.operation in _DELETED:
            # A delete carries no seal, and the jwks service never deletes: the keys held stay
            # (they still age out at the staleness bound). An issuer is dropped by configuration.
            log.warning(
                "keyset_refused", key=shown(entry.key, 80), reason="delete", detail="a delete is not sealed"
            )
            self._refused("delete")
            return
        try:
            keyset = unseal(self._seals, entry.key, entry.value or b"", now=self._cache.now)
        except KeySetRefused as exc:
            log.warning("keyset_refused", key=shown(entry.key, 80), reason=exc.reason, detail=str(exc))
            self._refused(exc.reason)
            return
        self._cache.apply_entry(entry.key, keyset)

    async def _run(self) -> None:
        while True:
            watcher = self._watcher
            try:
                if watcher is None:
                    kv = await self._bucket_when_created()
                    watcher = self._watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is not None:
                        self._apply(entry)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("keyset_watch_failed", bucket=self._bucket)
            else:
                return  # stop() ended the iteration
            if self._watcher is not None:
                with contextlib.suppress(Exception):
                    await self._watcher.stop()  # type: ignore[no-untyped-call]
            self._watcher = None
            await asyncio.sleep(REWATCH_DELAY_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
