"""The monitor: follow logs, verify every new checkpoint, keep evidence when one lies.

A :class:`LogMonitor` follows one log. Each :meth:`~LogMonitor.poll`:

1. loads its trusted state (:mod:`sealog.client.monitor.state`). With none it
   starts from the configured pinned checkpoint, or trusts the log's current
   checkpoint on first use (TOFU) and says so;
2. fetches the latest checkpoint with a consistency proof from the trusted
   one and verifies both (signature, origin, RFC 9162 §2.1.4.2);
3. with witness keys configured, fetches the log's witnessed checkpoint,
   proves it consistent with the latest one (a log showing witnesses another
   tree than this monitor is a split view), and checks the witness policy;
4. replaces its state, atomically and durably, with the verified checkpoint;
5. with ``full_audit``, downloads every new leaf, re-parses and re-hashes it,
   and recomputes the root with its own compact range
   (:meth:`LogClient.audit_entries`), saving its progress as it goes so a
   crash resumes where it stopped;
6. as a witness (``cosigner_key_file``), cosigns the verified checkpoint
   (c2sp.org/tlog-cosignature) and gives it to the log (AddCosignature).

When a check fails it writes an evidence file (:mod:`sealog.client.monitor.evidence`),
runs the alert command with its path, keeps its trusted state untouched, and
either stops (``on_failure = "exit"``) or carries on reporting
(``"continue"``). :class:`Monitor` runs several logs from one TOML file
(docs/monitoring.md has the reference).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import grpc

from sealog.client.checkpoint import SignedCheckpoint, open_checkpoint
from sealog.client.compact import CompactRange
from sealog.client.cosignature import CosignatureVerifier, Cosigner, cosign_checkpoint
from sealog.client.display import escape
from sealog.client.errors import (
    EntriesMismatchError,
    InconsistentCheckpointsError,
    InvalidSignatureError,
    MonitorStateError,
    SealogError,
    VerificationError,
    WitnessPolicyError,
)
from sealog.client.keyfile import read_key_file
from sealog.client.log_client import LogClient
from sealog.client.monitor.config import LogConfig, MonitorConfig
from sealog.client.monitor.evidence import (
    Evidence,
    evidence_of_entries_mismatch,
    evidence_of_inconsistency,
    write_evidence,
)
from sealog.client.monitor.state import MonitorState, load_state, save_state
from sealog.client.progress import Progress

__all__ = ["EXIT_FAILURE_DETECTED", "LogMonitor", "Monitor", "PollResult"]

EXIT_FAILURE_DETECTED = 3
"""Exit status of ``sealog monitor`` after a failed check with ``on_failure = "exit"``."""


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _short(root: bytes) -> str:
    return root.hex()[:12]


@dataclass(frozen=True)
class PollResult:
    """What one poll found. ``outcome`` is ``ok``, ``failed`` (evidence) or ``error``."""

    log: str
    outcome: str
    line: str
    size: int | None = None
    audited: int | None = None
    witnessed: int | None = None
    evidence: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """True when a check failed: the log misbehaved (or its answer was tampered with)."""
        return self.outcome == "failed"


class _CheckFailedError(Exception):
    """A check failed; carries the evidence to write."""

    def __init__(self, evidence: Evidence) -> None:
        super().__init__(evidence.summary)
        self.evidence = evidence


@dataclass
class _Poll:
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    witnessed: int | None = None


class LogMonitor:
    """Follows one log; :meth:`poll` does one round of checks. Not thread-safe.

    Holds an exclusive lock on its state folder while open, so two monitors
    never share (and overwrite) one state. Use as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        config: LogConfig,
        *,
        client: LogClient | None = None,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.config = config
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.verifier = config.verifier()
        self.origin = config.origin or self.verifier.name
        self.policy = config.policy()
        self.cosigner: Cosigner | None = None
        if config.cosigner_key_file is not None:
            self.cosigner = Cosigner.from_skey(
                read_key_file(config.cosigner_key_file, private=True)
            )
        self.client = client or LogClient(
            config.target, self.verifier, origin=self.origin, timeout=config.timeout_s
        )
        self._own_client = client is None
        self.state_path = config.state_dir / "state.json"
        self.evidence_dir = config.state_dir / "evidence"
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(config.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise MonitorStateError(
                f"{config.state_dir}: another monitor is using this state folder"
            ) from None
        self._last_cosigned = b""
        try:
            self.state = load_state(
                self.state_path, self.verifier, self.origin, full_audit=config.full_audit
            )
        except BaseException:
            self.close()
            raise
        if self.state is not None and self.state.audit is not None:
            size = self.state.checkpoint.checkpoint.size
            if self.state.audit.size < size:
                self._say(
                    f"resuming the full audit at leaf {self.state.audit.size:,} of {size:,} "
                    "(from the saved state)"
                )

    def close(self) -> None:
        """Release the state lock (and the client, if this monitor made it)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._own_client:
            self.client.close()

    def __enter__(self) -> LogMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- output ---------------------------------------------------------------------
    def _say(self, text: str) -> None:
        # One line per message: what the log sent (error details, names) is escaped.
        self.out.write(f"{_utc()} {self.config.name}: {escape(text)}\n")
        self.out.flush()

    def _save(self, state: MonitorState) -> None:
        save_state(self.state_path, state, self.verifier.vkey)
        self.state = state

    # --- one round ------------------------------------------------------------------
    def poll(self) -> PollResult:
        """Check the log once; never raises for what the log does (see :class:`PollResult`)."""
        before = self.state
        poll = _Poll()
        try:
            state = self._start() if self.state is None else self.state
            result = self._poll(state, before, poll)
        except _CheckFailedError as failure:
            result = self._failed(failure.evidence, poll)
        except grpc.RpcError as e:
            result = self._error(f"{e.code().name}: {e.details()}")
        except VerificationError as e:
            result = self._error(f"unverifiable answer: {e}")
        except (SealogError, OSError) as e:
            result = self._error(str(e))
        self._say(result.line)
        return result

    def _error(self, text: str) -> PollResult:
        size = None if self.state is None else self.state.checkpoint.checkpoint.size
        return PollResult(
            self.config.name,
            "error",
            f"error (trusted state kept, will retry): {text}",
            size=size,
            audited=None if self.state is None else self.state.audited,
        )

    def _start(self) -> MonitorState:
        """No saved state: start from the pinned checkpoint, or trust on first use."""
        pinned = self.config.pinned_checkpoint
        if pinned is not None:
            signed = open_checkpoint(pinned.read_bytes(), self.verifier, origin=self.origin)
            cp = signed.checkpoint
            self._say(
                f"no saved state: starting from the pinned checkpoint {pinned} "
                f"(size {cp.size}, root {_short(cp.root_hash)})"
            )
        else:
            signed = self._fetch(None)
            cp = signed.checkpoint
            self._say(
                f"no saved state: TRUST ON FIRST USE of checkpoint size {cp.size}, root "
                f"{_short(cp.root_hash)}. Everything later is checked against it; pin a "
                "checkpoint (pinned_checkpoint) to avoid trusting the log blindly."
            )
        if self.config.full_audit and cp.size:
            self._say(f"full audit: every leaf from 0 to {cp.size:,} will be re-hashed")
        state = MonitorState(signed, CompactRange() if self.config.full_audit else None)
        self._save(state)
        return state

    def _fetch(self, trusted: SignedCheckpoint | None) -> SignedCheckpoint:
        """The latest checkpoint, proven to extend ``trusted``; failures become evidence."""
        try:
            return self.client.checkpoint(trusted, witnessed=False)
        except InconsistentCheckpointsError as e:
            raise _CheckFailedError(self._inconsistency(e)) from e
        except VerificationError as e:
            raise self._bad_signature(e, trusted) from e

    def _inconsistency(self, e: InconsistentCheckpointsError) -> Evidence:
        return evidence_of_inconsistency(e, self.origin, self.verifier.vkey, self.config.target)

    def _bad_signature(
        self, error: VerificationError, trusted: SignedCheckpoint | None
    ) -> _CheckFailedError | VerificationError:
        note = self.client.last_received_note
        try:
            open_checkpoint(note, self.verifier, origin=self.origin)
        except SealogError as reason:
            return _CheckFailedError(
                Evidence(
                    kind="bad_signature",
                    origin=self.origin,
                    log_vkey=self.verifier.vkey,
                    target=self.config.target,
                    checkpoint=note,
                    trusted=trusted.note if trusted is not None else b"",
                    summary=f"the log served a checkpoint that does not verify: {reason}",
                    computed={"reason": str(reason)},
                )
            )
        return error  # the note is fine: the failure was elsewhere

    def _poll(self, state: MonitorState, before: MonitorState | None, poll: _Poll) -> PollResult:
        trusted = state.checkpoint
        latest = self._fetch(trusted)
        if self.policy is not None:
            self._check_witnessed(latest, poll)
        grew = latest.checkpoint.size - trusted.checkpoint.size
        if grew > 0:
            state = replace(state, checkpoint=latest)
            self._save(state)
        if state.audit is not None:
            state = self._audit(state)
        if self.cosigner is not None:
            self._cosign(latest, poll)
        cp = latest.checkpoint
        parts = [f"ok size {cp.size:,}"]
        if before is not None:
            parts[0] += f" (+{grew:,})"
        parts.append(f"root {_short(cp.root_hash)}")
        if state.audit is not None:
            parts.append(f"audited {state.audit.size:,}")
        parts += poll.notes
        parts += [f"WARNING {w}" for w in poll.warnings]
        return PollResult(
            self.config.name,
            "ok",
            ", ".join(parts),
            size=cp.size,
            audited=state.audited,
            witnessed=poll.witnessed,
            warnings=tuple(poll.warnings),
        )

    def _check_witnessed(self, latest: SignedCheckpoint, poll: _Poll) -> None:
        """The witnessed checkpoint must fit the latest one; then the policy is checked."""
        assert self.policy is not None
        try:
            witnessed = self.client.checkpoint(latest, witnessed=True)
            cosigned = len(self.policy.check(witnessed.note))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                poll.warnings.append("no witnessed checkpoint yet")
                return
            raise
        except InconsistentCheckpointsError as e:
            raise _CheckFailedError(self._inconsistency(e)) from e
        except WitnessPolicyError as e:
            poll.witnessed = int(e.note.split(b"\n", 2)[1])
            poll.warnings.append(f"witness policy not met at size {poll.witnessed}: {e}")
            return
        except InvalidSignatureError as e:
            note = self.client.last_received_note
            witness = self._witness(e.name, e.key_hash)
            if witness is None:
                raise self._bad_signature(e, latest) from e
            raise _CheckFailedError(
                Evidence(
                    kind="invalid_cosignature",
                    origin=self.origin,
                    log_vkey=self.verifier.vkey,
                    target=self.config.target,
                    checkpoint=note,
                    trusted=latest.note,
                    summary=f"the witnessed checkpoint carries a cosignature by {e.name} "
                    "that does not verify (copied from another checkpoint?)",
                    computed={"reason": str(e)},
                    witness_vkey=witness.vkey,
                )
            ) from e
        except VerificationError as e:
            raise self._bad_signature(e, latest) from e
        poll.witnessed = witnessed.checkpoint.size
        poll.notes.append(
            f"witnessed {poll.witnessed:,} ({cosigned} of {len(self.policy.witnesses)} "
            f"cosigned, {self.policy.threshold} needed)"
        )

    def _witness(self, name: str, key_hash: int) -> CosignatureVerifier | None:
        assert self.policy is not None
        for w in self.policy.witnesses:
            if (w.name, w.key_hash) == (name, key_hash):
                return w
        return None

    def _audit(self, state: MonitorState) -> MonitorState:
        """Download, re-hash and check the leaves the audit has not seen; save as it goes."""
        assert state.audit is not None
        signed = state.checkpoint
        start = state.audit.size
        total = signed.checkpoint.size - start
        progress = Progress(
            f"{self.config.name}: full audit",
            total,
            unit="leaves",
            stream=self.err,
            interval=1.0,
            enabled=total >= 10_000,
        )
        good = state.audit
        last_save = time.monotonic()
        try:
            for good in self.client.audit_entries(
                state.audit, signed, page_size=self.config.page_size
            ):
                progress.update(good.size - start)
                now = time.monotonic()
                if now - last_save >= self.config.save_interval_s:
                    self._save(MonitorState(signed, good))
                    last_save = now
        except EntriesMismatchError as e:
            self._keep_progress(signed, good)
            trusted = signed.note if good.size == signed.checkpoint.size else b""
            raise _CheckFailedError(
                evidence_of_entries_mismatch(
                    e, self.origin, self.verifier.vkey, self.config.target, trusted
                )
            ) from e
        except BaseException:
            self._keep_progress(signed, good)
            raise
        if total:
            progress.finish()
        state = MonitorState(signed, good)
        self._save(state)
        return state

    def _keep_progress(self, signed: SignedCheckpoint, good: CompactRange) -> None:
        if self.state is not None and self.state.audited != good.size:
            self._save(MonitorState(signed, good))

    def _cosign(self, latest: SignedCheckpoint, poll: _Poll) -> None:
        """As a witness: cosign the checkpoint just verified and hand it to the log."""
        assert self.cosigner is not None
        text = latest.note.split(b"\n\n", 1)[0]
        if text == self._last_cosigned:
            return
        try:
            self.client.add_cosignature(cosign_checkpoint(latest.note, self.cosigner))
        except grpc.RpcError as e:
            poll.warnings.append(f"cosignature not accepted by the log: {e.details()}")
            return
        except SealogError as e:
            poll.warnings.append(f"cosignature not accepted by the log: {e}")
            return
        self._last_cosigned = text
        poll.notes.append(f"cosigned {latest.checkpoint.size:,}")

    def _failed(self, evidence: Evidence, poll: _Poll) -> PollResult:
        path, new = write_evidence(self.evidence_dir, evidence)
        kept = self.state.checkpoint.checkpoint.size if self.state is not None else 0
        alert = self._alert(path, evidence) if new else "; already reported"
        line = (
            f"FAILED {evidence.kind}: {evidence.summary}; evidence: {path}; "
            f"trusted state kept (size {kept:,}){alert}"
        )
        return PollResult(
            self.config.name,
            "failed",
            line,
            size=kept,
            audited=None if self.state is None else self.state.audited,
            evidence=path,
            warnings=tuple(poll.warnings),
        )

    def _alert(self, path: Path, evidence: Evidence) -> str:
        command = self.config.alert_command
        if not command:
            return ""
        env = dict(os.environ)
        env.update(
            SEALOG_EVIDENCE=str(path),
            SEALOG_EVIDENCE_KIND=evidence.kind,
            SEALOG_LOG=self.config.name,
        )
        try:
            done = subprocess.run(
                [*command, str(path)], env=env, timeout=60, check=False, capture_output=True
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"; alert command failed: {e}"
        if done.returncode:
            return f"; alert command exited with {done.returncode}"
        return "; alert sent"


# --- several logs ----------------------------------------------------------------------
class Monitor:
    """Runs one :class:`LogMonitor` per configured log, each on its own poll interval."""

    def __init__(
        self,
        config: MonitorConfig,
        *,
        out: TextIO | None = None,
        err: TextIO | None = None,
        clients: Mapping[str, LogClient] | None = None,
    ) -> None:
        self.config = config
        self.logs: list[LogMonitor] = []
        try:
            for log in config.logs:
                client = (clients or {}).get(log.name)
                self.logs.append(LogMonitor(log, client=client, out=out, err=err))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release every log's state lock."""
        for log in self.logs:
            log.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_once(self) -> list[PollResult]:
        """Poll every log once."""
        return [log.poll() for log in self.logs]

    def run(self, *, max_polls: int | None = None, stop: threading.Event | None = None) -> int:
        """Poll until ``stop`` is set or ``max_polls`` polls were made; return an exit status.

        A failed check on a log with ``on_failure = "exit"`` ends the run
        with :data:`EXIT_FAILURE_DETECTED`; otherwise the status is 0.
        """
        stop = stop or threading.Event()
        due = [0.0] * len(self.logs)
        polls = 0
        while not stop.is_set() and (max_polls is None or polls < max_polls):
            i = min(range(len(due)), key=due.__getitem__)
            wait = due[i] - time.monotonic()
            if wait > 0:
                stop.wait(wait)
                continue
            log = self.logs[i]
            result = log.poll()
            polls += 1
            if result.failed and log.config.on_failure == "exit":
                return EXIT_FAILURE_DETECTED
            due[i] = time.monotonic() + log.config.poll_interval_s
        return 0
