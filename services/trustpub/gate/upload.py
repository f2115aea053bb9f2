"""An upload, streamed from the client to the index: the form read part by part, the file hashed
and counted on its way, never held whole.

The form's fields before the file (twine, uv and the other clients send the metadata first) are
read and checked before the index is asked anything; then one request to the index carries
those fields and every part after them, re-encoded as they arrive, chunked. A refusal found on
the way (the file over the limit, a body cut short, a client gone quiet) aborts that request
before its last chunk, so the index never sees a complete body and stores nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import BodyPartReader, MultipartReader, web

from trustpub.messages.provenance import distribution_of, normalize
from trustpub.messages.text import reason_phrase

T = TypeVar("T")

CHUNK = 64 * 1024
# The bytes of the index's answer passed on to the client (its message, not a page).
MAX_ANSWER = 64 * 1024
# Field names and file names as an index takes them (pypiserver's rule for file names).
_FIELD_NAME = re.compile(r"[A-Za-z0-9_:.-]{1,100}")
_FILENAME = re.compile(r"[A-Za-z0-9_.!+-]{1,255}")
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")
# A PEP 508 distribution name, ASCII only.
PROJECT_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,198}[A-Za-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9_.!+-]{1,100}")


class Refusal(Exception):
    """An upload the gate answers itself, as PyPI would: ``status``, a ``code`` for the audit
    and the metrics, and a message the client shows."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        # The message in the status line too, as PyPI does: twine shows the reason phrase.
        headers = {"WWW-Authenticate": 'Basic realm="trustpub"'} if self.status == 401 else None
        if self.status == 503:
            headers = {"Retry-After": "5"}
        return web.Response(
            status=self.status, reason=reason_phrase(self.message), text=self.message + "\n", headers=headers
        )


def bad(message: str) -> Refusal:
    return Refusal(400, "invalid-upload", message)


@dataclass
class Form:
    """The fields before the file, as sent (name, raw bytes), and the file part itself."""

    fields: list[tuple[str, bytes]]
    file: BodyPartReader

    def value(self, name: str) -> str:
        """The first value of a field as text ("" when absent).

        Raises:
            Refusal: the value is not UTF-8.
        """
        for key, raw in self.fields:
            if key == name:
                try:
                    return raw.decode()
                except UnicodeDecodeError:
                    raise bad(f"field {name!r} is not UTF-8") from None
        return ""


@dataclass
class Upload:
    """What a client sends and what the gate learns while passing it on."""

    project: str = ""
    version: str = ""
    filename: str = ""
    sha256: str = ""
    size: int = 0
    # Set when the whole body reached the index; a refusal found on the way otherwise.
    complete: bool = False
    failure: Refusal | None = None
    # For the watchdog: when a byte last moved, and whether the gate waits for the client.
    progress: float = field(default_factory=time.monotonic)
    waiting_for_client: bool = False


class Streamer:
    """Reads a client's form and re-encodes it for the index, one part at a time."""

    def __init__(self, reader: MultipartReader, *, max_file: int, max_metadata: int, idle: float) -> None:
        self.reader = reader
        self.max_file = max_file
        self.max_metadata = max_metadata
        self.idle = idle
        self.metadata = 0
        self.boundary = "trustpub-" + secrets.token_hex(16)
        self.state = Upload()

    async def _client(self, step: Awaitable[T]) -> T:
        """One read from the client, within the idle timeout.

        Raises:
            Refusal: the client sent nothing for too long, or its body ended early or broke.
        """
        self.state.waiting_for_client = True
        try:
            return await asyncio.wait_for(step, self.idle)
        except TimeoutError:
            raise bad(f"the upload stalled: nothing received for {self.idle:g} s") from None
        except Exception as exc:  # noqa: BLE001  (aiohttp's errors for a body cut short or malformed share no base)
            raise bad(f"the upload body is incomplete or malformed ({type(exc).__name__})") from None
        finally:
            self.state.waiting_for_client = False
            self.state.progress = time.monotonic()

    async def _next(self) -> BodyPartReader | None:
        part = await self._client(self.reader.next())
        if part is None:
            return None
        if isinstance(part, MultipartReader):
            raise bad("nested multipart bodies are not uploads")
        if part.name is None or not _FIELD_NAME.fullmatch(part.name):
            raise bad("a form field has no usable name")
        return part

    async def _text(self, part: BodyPartReader) -> bytes:
        value = bytearray()
        while chunk := await self._client(part.read_chunk(CHUNK)):
            self.metadata += len(chunk)
            if self.metadata > self.max_metadata:
                raise bad(f"the form's fields other than the file exceed {self.max_metadata} bytes")
            value += chunk
        return bytes(value)

    async def head(self) -> Form:
        """The fields before the first file part, and that part.

        Raises:
            Refusal: no file, or a field too large or unnamed.
        """
        fields: list[tuple[str, bytes]] = []
        while True:
            part = await self._next()
            if part is None:
                raise bad("the upload has no file (form field 'content')")
            if part.filename is not None:
                return Form(fields, part)
            fields.append((part.name or "", await self._text(part)))

    def _part_head(self, name: str, filename: str | None = None, content_type: str = "") -> bytes:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        lines = [f"--{self.boundary}", f"Content-Disposition: {disposition}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    async def body(self, form: Form) -> AsyncIterator[bytes]:
        """The request body for the index. A refusal found on the way is kept in
        ``state.failure`` and raised, which aborts the request before its end."""
        try:
            async for chunk in self._body(form):
                yield chunk
                self.state.progress = time.monotonic()
        except Refusal as exc:
            self.state.failure = exc
            raise
        self.state.complete = True

    async def _body(self, form: Form) -> AsyncIterator[bytes]:
        yield b"".join(self._part_head(name) + raw + b"\r\n" for name, raw in form.fields)
        part: BodyPartReader | None = form.file
        seen_content = False
        while part is not None:
            name = part.name or ""
            if part.filename is None:
                yield self._part_head(name) + await self._text(part) + b"\r\n"
            else:
                if not _FILENAME.fullmatch(part.filename):
                    raise bad(f"bad file name {part.filename[:100]!r}")
                content = name == "content"
                if content and seen_content:
                    raise bad("more than one file in field 'content'")
                seen_content |= content
                kind = part.headers.get("Content-Type", "application/octet-stream")
                kind = kind if _CONTENT_TYPE.fullmatch(kind) else "application/octet-stream"
                yield self._part_head(name, part.filename, kind)
                async for chunk in self._file(part, hashed=content):
                    yield chunk
                yield b"\r\n"
            part = await self._next()
        yield f"--{self.boundary}--\r\n".encode()

    async def _file(self, part: BodyPartReader, *, hashed: bool) -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        size = 0
        while chunk := await self._client(part.read_chunk(CHUNK)):
            size += len(chunk)
            if hashed:
                if size > self.max_file:
                    raise Refusal(
                        413, "too-large", f"the file exceeds the upload limit of {self.max_file} bytes"
                    )
                digest.update(chunk)
            else:
                self.metadata += len(chunk)
                if self.metadata > self.max_metadata:
                    raise bad(f"the form's parts other than the file exceed {self.max_metadata} bytes")
            yield chunk
        if hashed:
            self.state.sha256 = digest.hexdigest()
            self.state.size = size


def check_form(form: Form, projects: list[Any]) -> tuple[str, str, str]:
    """(project, version, file name) of an upload the token may make.

    Raises:
        Refusal: 400 for a form that is not a file upload or whose file name names another
            distribution; 403 for a project the token does not cover.
    """
    action = form.value(":action")
    if action != "file_upload":
        raise bad(f"':action' must be 'file_upload', got {action[:40]!r}")
    name = form.value("name")
    if not PROJECT_NAME.fullmatch(name):
        raise bad(f"'name' is not a distribution name: {name[:100]!r}")
    version = form.value("version")
    if not _VERSION.fullmatch(version):
        raise bad(f"'version' is missing or not a version: {version[:100]!r}")
    if form.file.name != "content" or form.file.filename is None:
        raise bad("the file must come in the form field 'content', after the metadata")
    filename = form.file.filename
    carried = distribution_of(filename)
    if not _FILENAME.fullmatch(filename) or carried is None:
        raise bad(f"{filename[:100]!r} is not a wheel or sdist file name")
    if normalize(carried) != normalize(name):
        raise bad(f"the file {filename!r} is not a file of {name!r}")
    allowed = {normalize(str(p)) for p in projects}
    if normalize(name) not in allowed:
        listed = ", ".join(sorted(allowed)) or "none"
        raise Refusal(
            403,
            "forbidden",
            f"The token is not allowed to upload to project {name!r} (it is for: {listed})",
        )
    return normalize(name), version, filename
