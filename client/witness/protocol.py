"""A C2SP witness: the tlog-witness ``add-checkpoint`` protocol, both sides.

Implements https://c2sp.org/tlog-witness ("add-checkpoint"). A witness
follows a set of logs, each known by its origin and public key(s). For each
it remembers the latest checkpoint it cosigned, and it cosigns
(c2sp.org/tlog-cosignature, ``cosignature/v1``) a new checkpoint only when
it is signed by the log and proven consistent with that one. So a log cannot
get two witnesses' cosignatures on two diverging trees unless it fools one
of them from the start.

The request body, line by line::

    old <size of the checkpoint the client thinks the witness has>
    <consistency proof hash, base64>          zero to 63 lines
                                              an empty line
    <the checkpoint: a signed note>

and the answer, on success, the witness's cosignature line(s). The status
codes are the spec's: 404 unknown origin, 403 no valid signature by a known
key, 400 malformed or ``old`` > the checkpoint's size, 409 ``old`` is not the
size the witness has (body: that size, ``text/x.tlog.size``) or same size with
another root, 422 the consistency proof fails.

:class:`Witness` is the witness's logic (the HTTP server is
:mod:`sealog.client.witness.endpoint`); :func:`add_checkpoint` is a client of any
witness that speaks the protocol.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sealog.client._encoding import decode_base64, encode_base64, parse_decimal
from sealog.client.checkpoint import Checkpoint
from sealog.client.cosignature import Cosigner
from sealog.client.durable import write_durably
from sealog.client.errors import (
    FormatError,
    InvalidSignatureError,
    SealogError,
    UnverifiedNoteError,
    VerificationError,
)
from sealog.client.note import NoteSignature, NoteVerifier, open_note, parse_note
from sealog.client.verify import verify_consistency

__all__ = [
    "ADD_CHECKPOINT",
    "MAX_PROOF_LINES",
    "MAX_REQUEST_BYTES",
    "SIZE_CONTENT_TYPE",
    "AddCheckpointRequest",
    "Witness",
    "WitnessError",
    "add_checkpoint",
    "check_add_checkpoint_answer",
]

log = logging.getLogger(__name__)

ADD_CHECKPOINT = "add-checkpoint"
"""The call's path below the witness's submission prefix."""
SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_PROOF_LINES = 63
MAX_REQUEST_BYTES = 128 * 1024
"""Largest request body a witness reads: 63 proof lines and a note of up to 100 signatures."""

_MAX_OLD_FIELD = 10**20 - 1
"""Largest ``old`` value parsed: 20 digits, as many as ``2**64 - 1`` has. A larger
size than the checkpoint's is refused later, as ``old`` > size."""


class WitnessError(SealogError):
    """A request the witness refuses, with the HTTP status the spec names for it."""

    def __init__(
        self, status: int, message: str, body: bytes = b"", content_type: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or (message + "\n").encode("utf-8")
        self.content_type = content_type or "text/plain; charset=utf-8"


@dataclass(frozen=True)
class AddCheckpointRequest:
    """The body of an ``add-checkpoint`` call."""

    old_size: int
    consistency_proof: tuple[bytes, ...]
    checkpoint: bytes

    def to_bytes(self) -> bytes:
        """The request body."""
        lines = [b"old %d\n" % self.old_size]
        lines += [encode_base64(h).encode("ascii") + b"\n" for h in self.consistency_proof]
        return b"".join(lines) + b"\n" + self.checkpoint

    @classmethod
    def parse(cls, body: bytes) -> AddCheckpointRequest:
        """Parse a request body strictly; :class:`WitnessError` 400 if it is malformed."""
        head, sep, note = body.partition(b"\n\n")
        if not sep:
            raise WitnessError(400, "request: no empty line before the checkpoint")
        lines = head.split(b"\n")
        old = parse_decimal(lines[0][4:], _MAX_OLD_FIELD) if lines[0].startswith(b"old ") else None
        if old is None:
            raise WitnessError(400, "request: first line must be 'old <size>' in ASCII decimal")
        if len(lines) - 1 > MAX_PROOF_LINES:
            raise WitnessError(400, f"request: more than {MAX_PROOF_LINES} proof lines")
        proof = []
        for i, line in enumerate(lines[1:], 1):
            try:
                h = decode_base64(line.decode("ascii"))
            except UnicodeDecodeError:
                h = None
            if h is None or len(h) != 32:
                raise WitnessError(400, f"request: proof line {i} is not a base64 SHA-256 hash")
            proof.append(h)
        return cls(old, tuple(proof), note)


def _state_name(origin: str) -> str:
    return "origin-" + hashlib.sha256(origin.encode("utf-8")).hexdigest()[:24] + ".note"


class Witness:
    """Cosigns checkpoints of the logs it follows, never going back on what it cosigned.

    ``logs`` maps each origin to the log's verifier key(s). The latest
    cosigned checkpoint of each origin is kept in ``state_dir`` (one file per
    origin, replaced atomically and durably before answering); checking the
    old size and saving the new checkpoint happen under one lock per origin,
    as the spec requires. Requests whose consistency proof fails are kept in
    ``state_dir/rejected/`` as possible evidence of a misbehaving log.
    """

    def __init__(
        self,
        cosigner: Cosigner,
        logs: Mapping[str, Sequence[NoteVerifier]],
        state_dir: str | Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cosigner = cosigner
        self.logs = {origin: tuple(keys) for origin, keys in logs.items()}
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SealogError(f"{self.state_dir}: another witness is using this folder") from None
        self._locks = {origin: threading.Lock() for origin in self.logs}
        self._clock = clock

    def close(self) -> None:
        """Release the state folder."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def latest(self, origin: str) -> bytes | None:
        """The latest checkpoint note cosigned for ``origin``, if any."""
        try:
            return (self.state_dir / _state_name(origin)).read_bytes()
        except FileNotFoundError:
            return None

    def _now(self) -> int:
        return int(self._clock())

    def add_checkpoint(self, body: bytes) -> bytes:
        """Handle one ``add-checkpoint`` body; return the cosignature line or raise WitnessError."""
        request = AddCheckpointRequest.parse(body)
        try:
            text, _ = parse_note(request.checkpoint)
            origin = text.split(b"\n", 1)[0].decode("utf-8")
        except (FormatError, UnicodeDecodeError) as e:
            raise WitnessError(400, f"checkpoint: not a signed note: {e}") from None
        keys = self.logs.get(origin)
        if keys is None:
            raise WitnessError(404, f"unknown log origin {origin!r}")
        try:
            open_note(request.checkpoint, keys)
            cp = Checkpoint.parse(text)
        except (UnverifiedNoteError, InvalidSignatureError) as e:
            raise WitnessError(403, f"checkpoint: no valid signature by the log's key: {e}") from e
        except FormatError as e:
            raise WitnessError(400, f"checkpoint: malformed: {e}") from e
        if request.old_size > cp.size:
            raise WitnessError(
                400, f"old size {request.old_size} is larger than the checkpoint's {cp.size}"
            )
        with self._locks[origin]:
            latest_note = self.latest(origin)
            latest = Checkpoint.parse(parse_note(latest_note)[0]) if latest_note else None
            latest_size = latest.size if latest is not None else 0
            if request.old_size != latest_size:
                raise WitnessError(
                    409,
                    f"old size {request.old_size}, but the latest cosigned size is {latest_size}",
                    f"{latest_size}\n".encode("ascii"),
                    SIZE_CONTENT_TYPE,
                )
            if latest is not None and latest.size > 0:
                if request.old_size == cp.size and latest.root_hash != cp.root_hash:
                    self._keep_rejected(origin, body)
                    raise WitnessError(409, f"another tree of size {cp.size} was cosigned")
                try:
                    verify_consistency(
                        latest.size,
                        cp.size,
                        latest.root_hash,
                        cp.root_hash,
                        request.consistency_proof,
                    )
                except VerificationError as e:
                    self._keep_rejected(origin, body)
                    raise WitnessError(422, f"consistency proof does not verify: {e}") from e
            elif request.consistency_proof:  # every tree extends the empty one
                raise WitnessError(422, "old size 0 takes an empty consistency proof")
            write_durably(self.state_dir / _state_name(origin), request.checkpoint)
            signature = self.cosigner.sign_at(text, self._now())
        line = NoteSignature(self.cosigner.name, self.cosigner.key_hash, signature).to_line()
        log.info("cosigned %s size %d", origin, cp.size)
        return line

    def _keep_rejected(self, origin: str, body: bytes) -> None:
        folder = self.state_dir / "rejected"
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-"
        name += hashlib.sha256(body).hexdigest()[:16] + ".txt"
        try:
            write_durably(folder / name, body)
            log.warning("kept a rejected checkpoint of %s in %s", origin, folder / name)
        except OSError:
            log.exception("could not keep a rejected request")


def add_checkpoint(url: str, request: AddCheckpointRequest, *, timeout: float = 10.0) -> bytes:
    """POST ``request`` to a witness's ``add-checkpoint`` URL; return its cosignature lines.

    ``url`` is the full URL (submission prefix + ``/add-checkpoint``),
    ``http://`` or ``https://``. Raises :class:`WitnessError` with the
    witness's status for any answer but 200 (for 409 with
    ``text/x.tlog.size``, ``body`` holds the witness's size), OSError when it
    cannot be reached.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"witness URL {url!r}: want http(s)://host[:port]/path")
    conn_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_class(parts.hostname, parts.port, timeout=timeout)
    try:
        body = request.to_bytes()
        conn.request(
            "POST",
            parts.path or "/",
            body=body,
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
        response = conn.getresponse()
        data = response.read(MAX_REQUEST_BYTES)
        return check_add_checkpoint_answer(
            url, response.status, response.getheader("Content-Type", ""), data
        )
    finally:
        conn.close()


def check_add_checkpoint_answer(url: str, status: int, content_type: str, body: bytes) -> bytes:
    """The cosignature lines of a witness's answer, or :class:`WitnessError` with its status.

    Shared by every client of the call (this module's blocking one and the
    log's pusher): for 409 with ``text/x.tlog.size`` the error's ``body``
    holds the witness's size.
    """
    if status != 200:
        raise WitnessError(
            status,
            f"witness {url} answered {status}: {body[:200].decode('utf-8', 'replace').strip()}",
            body,
            content_type,
        )
    return body
