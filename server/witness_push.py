"""The log asks C2SP witnesses for cosignatures: tlog-witness ``add-checkpoint``, pushed.

With ``sealog serve --push-witness URL``, a background thread sends each new
checkpoint (at most one round at a time; checkpoints that arrive meanwhile
are coalesced into the latest) to every witness URL, with a consistency proof
from the size that witness last cosigned, and stores the cosignature lines
it answers through :meth:`Log.add_cosignature` — the same checks as the
AddCosignature RPC, so the witness's key must be one of ``--witness-vkey``.
A witness that answers 409 with its size gets the request again from that
size; failures are logged and retried on the next checkpoint or after
``retry_s``. Any witness that speaks c2sp.org/tlog-witness can serve a sealog
log this way, ``sealog witness serve`` included.
"""

from __future__ import annotations

import logging
import threading

from sealog.client.checkpoint import Checkpoint
from sealog.client.errors import SealogError
from sealog.client.note import parse_note
from sealog.client.witness import (
    SIZE_CONTENT_TYPE,
    AddCheckpointRequest,
    WitnessError,
    add_checkpoint,
)
from sealog.server.log import Log

__all__ = ["WitnessPusher"]

log = logging.getLogger(__name__)


class WitnessPusher:
    """Pushes the log's checkpoints to tlog-witness URLs and stores their cosignatures."""

    def __init__(
        self,
        the_log: Log,
        urls: list[str],
        *,
        timeout: float = 10.0,
        retry_s: float = 30.0,
    ) -> None:
        self._log = the_log
        self.urls = list(urls)
        self.timeout = timeout
        self.retry_s = retry_s
        self._sizes: dict[str, int] = {}
        self._done: dict[str, bytes] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sealog-witness-push", daemon=True)

    def start(self) -> WitnessPusher:
        """Push the current checkpoint now, and every new one."""
        self._log.add_checkpoint_listener(lambda note: self._wake.set())
        self._wake.set()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop pushing (a request in flight finishes or times out)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.retry_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            note = self._log.latest_checkpoint()
            for url in self.urls:
                if (
                    self._done.get(url) != note
                    and not self._stop.is_set()
                    and self._push(url, note)
                ):
                    self._done[url] = note

    def _push(self, url: str, note: bytes) -> bool:
        size = Checkpoint.parse(parse_note(note)[0]).size
        for _attempt in range(3):
            old = self._sizes.get(url, 0)
            if old > size:
                log.error(
                    "witness %s has size %d, beyond this log's %d: not pushing", url, old, size
                )
                return False
            try:
                proof = self._log.consistency_proof(old, size) if 0 < old < size else []
                lines = add_checkpoint(
                    url, AddCheckpointRequest(old, tuple(proof), note), timeout=self.timeout
                )
            except WitnessError as e:
                if e.status == 409 and e.content_type.startswith(SIZE_CONTENT_TYPE):
                    try:
                        self._sizes[url] = int(e.body.decode("ascii").strip())
                        continue
                    except ValueError:
                        pass
                log.warning("witness %s refused checkpoint %d: %s", url, size, e)
                return False
            except (OSError, SealogError) as e:
                log.warning("witness %s unreachable: %s", url, e)
                return False
            self._sizes[url] = size
            try:
                self._log.add_cosignature(note + lines)
            except SealogError as e:
                log.warning("cosignature from witness %s not stored: %s", url, e)
                return False
            return True
        return False
