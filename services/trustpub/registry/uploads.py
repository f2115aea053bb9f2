"""Uploads through the gate: the record of each accepted file, its provenance, refusals audited.

``upload.record`` (sealed by the gate: no other service can record an upload) writes the upload
row and its ``upload.accepted`` audit row in one statement, with the provenance copied from the
mint record of the token that carried it (never from the request), and only for a project of
that mint record. ``upload.provenance`` reads the latest record of a file and hands it, sealed,
to the minter, which signs it and answers the gate; a file never recorded is ``found: false``.
Refused uploads arrive as sealed ``upload.refused`` events and become audit rows, once each
(DESIGN.md, "The upload gate").
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog
from nats.aio.msg import Msg

from trustpub.messages import InvalidPayload, InvalidToken, Unavailable
from trustpub.messages.endpoints import UPLOAD_PROVENANCE, UPLOAD_RECORD, UPLOAD_REFUSED
from trustpub.messages.provenance import normalize
from trustpub.messages.v1 import (
    ProvenanceReply,
    ProvenanceRequest,
    ProvenanceSignRequest,
    UploadEvent,
    UploadRecord,
    UploadRecordRequest,
)
from trustpub.registry import audit
from trustpub.registry.consumer import RETRY_DELAY_S, EventConsumer
from trustpub.registry.metrics import RegistryMetrics
from trustpub.registry.pool import Database
from trustpub.runtime import Forward, Runtime
from trustpub.runtime.seal import SealError

log = structlog.get_logger("trustpub.registry")

# What a record may hold: the gate checked the same, this is the registry's own guard.
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_NAME = 300
# The codes a gate refuses uploads with (gate/upload.py); anything else did not come from one.
REFUSAL_CODES = frozenset(
    {"invalid-token", "forbidden", "invalid-upload", "too-large", "unavailable", "index-refused"}
)

_ACCEPTED_AUDIT = audit.insert_rows(
    "event_id, at, kind, publisher_id, mint_id, outcome, detail",
    """SELECT $1::uuid, ins.uploaded_at, 'upload.accepted', ins.publisher_id, ins.mint_id, 'accepted',
           jsonb_build_object('project', ins.project, 'version', ins.version, 'filename', ins.filename,
                              'sha256', ins.sha256, 'size', ins.size, 'token_hash_prefix', $8::text,
                              'provenance', ins.provenance)
    FROM ins""",
)
_RECORD = f"""
WITH m AS (
    SELECT id, publisher_id, provenance FROM mints
    WHERE id = $2::uuid
      AND $3::text = ANY(SELECT lower(regexp_replace(p, '[-_.]+', '-', 'g')) FROM unnest(projects) p)
), ins AS (
    INSERT INTO uploads (id, mint_id, publisher_id, project, version, filename, sha256, size, provenance)
    SELECT $1::uuid, m.id, m.publisher_id, $3::text, $4::text, $5::text, $6::text, $7::bigint, m.provenance
    FROM m
    ON CONFLICT (id) DO NOTHING
    RETURNING *
), audit AS (
    {_ACCEPTED_AUDIT}
    RETURNING 1
)
SELECT ins.*, (SELECT count(*) FROM audit) AS audited FROM ins
"""  # noqa: S608  (constant SQL)
_BY_ID = "SELECT * FROM uploads WHERE id = $1"
_LATEST = """
SELECT * FROM uploads WHERE project = $1 AND filename = $2 ORDER BY uploaded_at DESC, id LIMIT 1
"""
_STORE_REFUSED = audit.insert_rows(
    "event_id, at, kind, mint_id, outcome, code, detail",
    """SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::uuid[], $5::text[], $6::text[],
                     $7::jsonb[])""",
)


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def _record(row: Any) -> UploadRecord:  # noqa: ANN401  (an asyncpg Record)
    return UploadRecord(
        upload_id=str(row["id"]),
        project=row["project"],
        version=row["version"],
        filename=row["filename"],
        sha256=row["sha256"],
        size=int(row["size"]),
        uploaded_at=int(row["uploaded_at"].timestamp()),
        mint_id=str(row["mint_id"]),
        publisher_id=str(row["publisher_id"]),
        provenance={str(k): str(v) for k, v in dict(row["provenance"] or {}).items()},
    )


class Uploads:
    """The registry's side of the upload gate."""

    def __init__(self, db: Database, metrics: RegistryMetrics) -> None:
        self.db = db
        self.metrics = metrics

    async def record(self, req: UploadRecordRequest) -> UploadRecord:
        """Record an accepted upload and its audit row, once per ``upload_id``.

        Raises:
            InvalidPayload: a field is not what a gate sends.
            InvalidToken: no mint record has this id, or its projects do not include the project.
            Unavailable: the database did not answer.
        """
        upload_id, mint_id = _uuid(req.upload_id), _uuid(req.mint_id)
        project = normalize(req.project)
        if (
            upload_id is None
            or mint_id is None
            or not _SHA256.fullmatch(req.sha256)
            or req.size < 0
            or not (0 < len(project) <= MAX_NAME and 0 < len(req.filename) <= MAX_NAME)
            or not 0 < len(req.version) <= MAX_NAME
        ):
            raise InvalidPayload("malformed upload record")
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                _RECORD,
                upload_id,
                mint_id,
                project,
                req.version,
                req.filename,
                req.sha256,
                req.size,
                req.token_hash_prefix[:16],
            )
            if row is None:
                row = await conn.fetchrow(_BY_ID, upload_id)  # a retry of a recorded upload
                if row is None:
                    raise InvalidToken(f"the upload token's mint record does not cover project {project!r}")
            else:
                self.metrics.audited("upload.accepted", int(row["audited"]))
        record = _record(row)
        log.info(
            "upload_recorded",
            upload_id=record.upload_id,
            project=record.project,
            filename=record.filename,
            mint_id=record.mint_id,
        )
        return record

    async def provenance(self, req: ProvenanceRequest) -> ProvenanceReply | Forward[ProvenanceSignRequest]:
        """The latest record of a file, handed to the minter to sign; not found otherwise.

        Raises:
            Unavailable: the database did not answer.
        """
        project = normalize(req.project)
        if not (0 < len(project) <= MAX_NAME and 0 < len(req.filename) <= MAX_NAME):
            return ProvenanceReply(found=False)
        async with self.db.connection() as conn:
            row = await conn.fetchrow(_LATEST, project, req.filename)
        if row is None:
            return ProvenanceReply(found=False)
        return Forward(ProvenanceSignRequest(record=_record(row)))


class RefusalConsumer(EventConsumer):
    """Stores the gate's ``upload.refused`` events in ``audit_events``, once each, only with the
    gate's seal and a code a gate refuses with; acknowledged after the commit."""

    def __init__(self, rt: Runtime, db: Database, metrics: RegistryMetrics) -> None:
        super().__init__(rt, UPLOAD_REFUSED)
        self.db = db
        self.metrics = metrics
        self.decoder = msgspec.json.Decoder(UploadEvent)

    async def store(self, msgs: Sequence[Msg]) -> int:
        """Insert a batch of refusals; ack them after the commit. Returns the rows inserted.

        Raises:
            Unavailable: the database is down (the events are redelivered).
        """
        good: list[Msg] = []
        cols: list[list[Any]] = [[] for _ in range(7)]
        for msg in msgs:
            try:
                self.rt.check_event(UPLOAD_REFUSED, msg)
                event = self.decoder.decode(msg.data)
            except (SealError, msgspec.MsgspecError) as exc:
                reason = exc.reason if isinstance(exc, SealError) else "malformed"
                self.rt.metrics.bus_refused.labels("events.upload.refused", reason).inc()
                log.warning("upload_audit_refused", reason=reason, detail=str(exc)[:200])
                await msg.term()
                continue
            if event.outcome != "refused" or event.code not in REFUSAL_CODES:
                self.rt.metrics.bus_refused.labels("events.upload.refused", "unknown-code").inc()
                await msg.term()
                continue
            good.append(msg)
            event_id = _uuid(event.event_id) or uuid.uuid5(uuid.NAMESPACE_URL, bytes(msg.data).hex())
            detail = {
                "status": event.status,
                "description": event.description[:1000],
                "project": event.project[:MAX_NAME],
                "version": event.version[:MAX_NAME],
                "filename": event.filename[:MAX_NAME],
                "token_hash_prefix": event.token_hash_prefix[:16],
            }
            row = (event_id, msg.metadata.timestamp, "upload.refused", _uuid(event.mint_id), "refused")
            for col, value in zip(cols, (*row, event.code, detail), strict=True):
                col.append(value)
        if not good:
            return 0
        try:
            async with self.db.connection() as conn:
                status = await conn.execute(_STORE_REFUSED, *cols)
        except Unavailable:
            for msg in good:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=RETRY_DELAY_S)
            raise
        inserted = int(status.rsplit(" ", 1)[-1])
        self.metrics.audited("upload.refused", inserted)
        for msg in good:
            await msg.ack()
        return inserted


def serve(rt: Runtime, db: Database, metrics: RegistryMetrics, concurrency: int) -> None:
    """Serve the gate's endpoints and consume its refusals (called from the registry's setup)."""
    uploads = Uploads(db, metrics)
    rt.serve(UPLOAD_RECORD, uploads.record, concurrency=concurrency)
    rt.serve(UPLOAD_PROVENANCE, uploads.provenance, concurrency=concurrency)
    rt.background(RefusalConsumer(rt, db, metrics).run(), "upload refusal consumer")
