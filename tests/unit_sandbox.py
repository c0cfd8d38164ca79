"""Run a command inside the sandbox deploy/sealog.service asks systemd for, without systemd.

``python tests/unit_sandbox.py UNIT -- COMMAND...`` reads the unit's ``[Service]`` section
and, before it executes COMMAND, applies what the kernel can apply to one process:

- ``NoNewPrivileges=yes``: ``prctl(PR_SET_NO_NEW_PRIVS)``;
- ``MemoryDenyWriteExecute=yes``: ``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)``, the
  kernel's own form of it (Linux 6.3 and later): no mapping is ever writable and
  executable at once;
- ``SystemCallFilter=`` and ``SystemCallErrorNumber=``: a seccomp allow list of the
  named groups, expanded by ``systemd-analyze syscall-filter`` (the same tables systemd
  uses), ``~`` lines taken out, the calls systemd always permits added; any other call
  fails with the error number;
- ``RestrictAddressFamilies=``: ``socket()`` only for those families.

The file system, user and namespace settings need systemd (or root and mount
namespaces) and are not applied. Exit status 125 means the sandbox could not be set up
(no libseccomp, a kernel without PR_SET_MDWE); the message says which.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

__all__ = ["CANNOT_SANDBOX", "service_settings", "syscall_group"]

CANNOT_SANDBOX = 125

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_MDWE = 65
_PR_MDWE_REFUSE_EXEC_GAIN = 1
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_EQ = 4
_ALWAYS_PERMITTED = ("execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn")
"""What systemd.exec(5) says an allow list always permits."""


def service_settings(unit: Path) -> list[tuple[str, str]]:
    """The ``key=value`` lines of the unit's ``[Service]`` section, in order (keys repeat)."""
    settings: list[tuple[str, str]] = []
    section = ""
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service":
            key, _, value = line.partition("=")
            settings.append((key.strip(), value.strip()))
    return settings


def syscall_group(name: str) -> set[str]:
    """The system calls of ``@name`` or of one call's name, groups expanded."""
    if not name.startswith("@"):
        return {name}
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:  # the first line is the group's own name
        entry = line.strip()
        if entry and not entry.startswith("#"):
            calls |= syscall_group(entry)
    return calls


def _allowed_calls(settings: list[tuple[str, str]]) -> set[str]:
    allowed: set[str] = set()
    for key, value in settings:
        if key != "SystemCallFilter" or not value:
            continue
        deny = value.startswith("~")
        names = set().union(*(syscall_group(n) for n in value.lstrip("~").split()))
        if deny:
            allowed -= names
        else:
            allowed |= names
    return allowed | set(_ALWAYS_PERMITTED)


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def _cannot(reason: str) -> NoReturn:
    print(f"unit_sandbox: cannot set up the sandbox: {reason}", file=sys.stderr)
    sys.exit(CANNOT_SANDBOX)


def _apply(settings: list[tuple[str, str]]) -> None:
    values = dict(settings)
    libc = ctypes.CDLL(None, use_errno=True)
    if values.get("NoNewPrivileges") == "yes" and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        _cannot(f"PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
    if values.get("MemoryDenyWriteExecute") == "yes" and libc.prctl(
        _PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0
    ):
        _cannot(f"PR_SET_MDWE (Linux 6.3 or later): {os.strerror(ctypes.get_errno())}")
    allowed = _allowed_calls(settings)
    if not allowed - set(_ALWAYS_PERMITTED):
        return  # no SystemCallFilter=
    found = ctypes.util.find_library("seccomp")
    if found is None:
        _cannot("libseccomp not found")
    seccomp = ctypes.CDLL(found, use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = (ctypes.c_uint32,)
    seccomp.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    seccomp.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    seccomp.seccomp_load.argtypes = (ctypes.c_void_p,)
    error = getattr(errno, values.get("SystemCallErrorNumber", "EPERM"))
    ctx = seccomp.seccomp_init(0x00050000 | error)  # SCMP_ACT_ERRNO(error)
    families = values.get("RestrictAddressFamilies", "").split()
    for name in sorted(allowed):
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            continue  # not a call of this architecture
        if name == "socket" and families:
            for family in families:
                cmp = _ArgCmp(0, _SCMP_CMP_EQ, int(getattr(socket, family)), 0)
                if seccomp.seccomp_rule_add_array(ctx, _SCMP_ACT_ALLOW, number, 1, cmp):
                    _cannot(f"seccomp rule for socket({family})")
        elif seccomp.seccomp_rule_add_array(ctx, _SCMP_ACT_ALLOW, number, 0, None):
            _cannot(f"seccomp rule for {name}")
    if seccomp.seccomp_load(ctx):
        _cannot("seccomp_load failed")


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: unit_sandbox.py UNIT -- COMMAND...", file=sys.stderr)
        sys.exit(2)
    _apply(service_settings(Path(argv[0])))
    os.execv(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
