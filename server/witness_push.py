"""The log asks C2SP witnesses for cosignatures: tlog-witness ``add-checkpoint``, pushed.

With ``sealog serve --push-witness URL``, the log sends its latest checkpoint
to every witness URL, with a consistency proof from the size that witness
last cosigned, and stores the cosignature lines it answers through
:meth:`Log.add_cosignature` — the same checks as the AddCosignature RPC, so
the witness's key must be one of ``--witness-vkey``. Any witness that speaks
c2sp.org/tlog-witness can serve a sealog log this way, ``sealog witness
serve`` included.

How often: public witnesses grant each log a quota of add-checkpoint
requests a day (the witness network's log lists call it ``qpd``), while a log
may commit hundreds of checkpoints a second. So each witness gets **at most
one round per** ``interval_s`` (default :data:`DEFAULT_PUSH_INTERVAL_S`, 8,640
rounds a day): a checkpoint that is committed sooner waits, and the ones that
are committed meanwhile are coalesced into the latest, which is sent once the
interval has passed — the newest checkpoint is always pushed, at most
``interval_s`` late. Every witness in a round gets the same checkpoint, so
they cosign one checkpoint together. A round is one request to each witness,
or two when it answers 409 with its size (on first contact, or after it lost
track) and the request is repeated from that size. A witness whose request
failed (unreachable, refused, a timeout) joins a round again after
``max(interval_s, retry_s)``.

Every request has a total deadline (``timeout_s``: connecting, sending,
waiting, reading), and answers above
:data:`~sealog.client.witness.protocol.MAX_REQUEST_BYTES` are refused. The witnesses of
a round are asked concurrently, on the pusher's own event loop, so a slow one
delays the others' next round by at most ``timeout_s``; the log's reads and
its cosignature write run on worker threads (they touch LMDB).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from sealog.client.checkpoint import Checkpoint
from sealog.client.errors import SealogError
from sealog.client.note import parse_note
from sealog.client.witness.protocol import (
    MAX_REQUEST_BYTES,
    SIZE_CONTENT_TYPE,
    AddCheckpointRequest,
    WitnessError,
    check_add_checkpoint_answer,
)
from sealog.server.log import Log

__all__ = ["DEFAULT_PUSH_INTERVAL_S", "PushStats", "WitnessPusher", "witness_label"]

log = logging.getLogger(__name__)

DEFAULT_PUSH_INTERVAL_S = 10.0
"""Least time between two rounds of add-checkpoint requests to one witness: 8,640 a
day, the quota the witness network's staging list grants a Sigsum log."""


@dataclass
class PushStats:
    """One witness URL's push outcomes so far."""

    outcomes: Counter[str] = field(default_factory=Counter)
    """Rounds by outcome: ``ok`` (cosigned and stored), ``refused`` (the witness said
    no, or has a larger tree), ``unreachable``, ``not_stored`` (the cosignature did not
    verify or could not be written), ``error`` (a fault of the pusher's own)."""
    last_success: float | None = None
    """``time.monotonic()`` of the last ``ok``."""


def witness_label(url: str) -> str:
    """``url`` without credentials, query or fragment: how metrics name a witness."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class WitnessPusher:
    """Pushes the log's checkpoints to tlog-witness URLs and stores their cosignatures."""

    def __init__(
        self,
        the_log: Log,
        urls: list[str],
        *,
        interval_s: float = DEFAULT_PUSH_INTERVAL_S,
        timeout_s: float = 10.0,
        retry_s: float = 30.0,
    ) -> None:
        for name, value in (("interval_s", interval_s), ("timeout_s", timeout_s)):
            if not value > 0:
                raise ValueError(f"WitnessPusher {name}: {value}, want > 0")
        self._log = the_log
        self.urls = list(urls)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.requests_sent: dict[str, int] = dict.fromkeys(self.urls, 0)
        """add-checkpoint requests sent to each URL so far."""
        self._sizes: dict[str, int] = {}
        self._stats = {url: PushStats() for url in self.urls}
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="sealog-witness-push", daemon=True)
        self._ready = threading.Event()

    def start(self) -> WitnessPusher:
        """Push the current checkpoint now, and the latest one at most every ``interval_s``."""
        self._thread.start()
        self._ready.wait()
        self._log.add_checkpoint_listener(self._on_checkpoint)
        return self

    def push_stats(self) -> dict[str, PushStats]:
        """Each URL's outcomes so far, by :func:`witness_label` (URLs that differ only in
        credentials or query are added together)."""
        out: dict[str, PushStats] = {}
        for url, stats in self._stats.items():
            total = out.setdefault(witness_label(url), PushStats())
            total.outcomes.update(stats.outcomes)
            if stats.last_success is not None:
                total.last_success = max(total.last_success or 0.0, stats.last_success)
        return out

    def stop(self) -> None:
        """Stop pushing; a request in flight is abandoned."""
        if self._thread.is_alive() and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(self.timeout_s + 5)

    def _on_checkpoint(self, note: bytes) -> None:
        # On the sequencer's thread: only hand the news to the loop.
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to wake
            self._loop.call_soon_threadsafe(self._wake_up)

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._ready.set()
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            rounds = asyncio.create_task(self._rounds(session))
            await self._stopping.wait()
            rounds.cancel()
            await asyncio.gather(rounds, return_exceptions=True)

    async def _rounds(self, session: aiohttp.ClientSession) -> None:
        """Rounds at least ``interval_s`` apart, each sending one checkpoint to the witnesses due.

        Every witness in a round gets the same checkpoint (the latest when it
        starts), so witnesses that poll nothing still cosign one checkpoint
        together and a k-of-n policy is met on it. A witness is due when it
        does not have that checkpoint yet and its retry time (after a failed
        round) has come.
        """
        pushed: dict[str, bytes | None] = dict.fromkeys(self.urls)
        retry_at = dict.fromkeys(self.urls, 0.0)  # time.monotonic()
        last_round = -self.interval_s
        assert self._wake is not None
        while True:
            self._wake.clear()
            latest = self._log.latest_checkpoint()
            behind = [url for url in self.urls if pushed[url] != latest]
            if not behind:
                await self._wake.wait()
                continue
            now = time.monotonic()
            start_at = max(last_round + self.interval_s, min(retry_at[url] for url in behind))
            if start_at > now:
                # Checkpoints committed meanwhile coalesce; one that makes another
                # witness behind wakes this up to think again.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), start_at - now)
                continue
            note = self._log.latest_checkpoint()
            due = [url for url in self.urls if pushed[url] != note and retry_at[url] <= now]
            last_round = now
            results = await asyncio.gather(
                *(self._push(session, url, note) for url in due), return_exceptions=True
            )
            for url, result in zip(due, results, strict=True):
                stats = self._stats[url]
                if isinstance(result, BaseException):
                    log.error("pushing to witness %s failed", witness_label(url), exc_info=result)
                outcome = "error" if isinstance(result, BaseException) else result
                stats.outcomes[outcome] += 1
                if outcome == "ok":
                    stats.last_success = time.monotonic()
                    pushed[url] = note
                    continue
                retry_at[url] = now + max(self.interval_s, self.retry_s)

    async def _push(self, session: aiohttp.ClientSession, url: str, note: bytes) -> str:
        """Push ``note`` to ``url``; the outcome, as :attr:`PushStats.outcomes` names it."""
        size = Checkpoint.parse(parse_note(note)[0]).size
        for _attempt in range(2):
            old = self._sizes.get(url, 0)
            if old > size:
                log.error(
                    "witness %s has size %d, beyond this log's %d: not pushing",
                    witness_label(url),
                    old,
                    size,
                )
                return "refused"
            try:
                proof = (
                    await asyncio.to_thread(self._log.consistency_proof, old, size)
                    if 0 < old < size
                    else []
                )
                lines = await self._post(
                    session, url, AddCheckpointRequest(old, tuple(proof), note)
                )
            except WitnessError as e:
                if e.status == 409 and e.content_type.startswith(SIZE_CONTENT_TYPE):
                    try:
                        self._sizes[url] = int(e.body.decode("ascii").strip())
                        continue
                    except ValueError:
                        pass
                log.warning("witness %s refused checkpoint %d: %s", witness_label(url), size, e)
                return "refused"
            except (aiohttp.ClientError, TimeoutError, OSError, SealogError) as e:
                log.warning(
                    "witness %s unreachable: %s", witness_label(url), str(e) or type(e).__name__
                )
                return "unreachable"
            self._sizes[url] = size
            try:
                await asyncio.to_thread(self._log.add_cosignature, note + lines)
            except SealogError as e:
                log.warning("cosignature from witness %s not stored: %s", witness_label(url), e)
                return "not_stored"
            return "ok"
        return "refused"

    async def _post(
        self, session: aiohttp.ClientSession, url: str, request: AddCheckpointRequest
    ) -> bytes:
        """One add-checkpoint request, within the session's total timeout.

        A kept-alive connection the witness closed just as it was reused is
        tried once more, on a new connection.
        """
        try:
            return await self._post_once(session, url, request)
        except aiohttp.ServerDisconnectedError:
            return await self._post_once(session, url, request)

    async def _post_once(
        self, session: aiohttp.ClientSession, url: str, request: AddCheckpointRequest
    ) -> bytes:
        self.requests_sent[url] += 1
        async with session.post(
            url, data=request.to_bytes(), headers={"Content-Type": "text/plain; charset=utf-8"}
        ) as response:
            data = bytearray()
            async for chunk in response.content.iter_chunked(16 * 1024):
                data += chunk
                if len(data) > MAX_REQUEST_BYTES:
                    raise SealogError(
                        f"witness {witness_label(url)}: answer longer than "
                        f"{MAX_REQUEST_BYTES} bytes"
                    )
            return check_add_checkpoint_answer(
                witness_label(url),
                response.status,
                response.headers.get("Content-Type", ""),
                bytes(data),
            )
