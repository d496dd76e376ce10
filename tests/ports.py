"""Loopback TCP ports for the servers the tests start (never hard-coded).

A port picked now and bound later (by ``mlflow server``, ``ray start``, a DDP rendezvous, a relay
started again on the same port) is open to a race when it comes from the kernel's ephemeral
range, as ``bind(("127.0.0.1", 0))`` gives: in between, any outgoing connection on the machine
(Ray's processes open hundreds while a cluster starts) may be given that very port as its source
port, and the server then fails with "address already in use". The ports handed out here lie
between Ray's worker-port range (10002-19999) and the ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``), where ``connect()`` never allocates; each one is
checked free on every address and handed out once per process, so two servers of one test
session never get the same port.
"""

from __future__ import annotations

import os
import random
import socket
import threading

#: lowest port handed out (above Ray's default worker ports 10002-19999)
LOW = 20000

_given: set[int] = set()
_lock = threading.Lock()
_rng = random.Random(os.getpid())  # another session on the machine starts elsewhere


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for source ports of outgoing connections (Linux default if unknown)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            low, high = (int(x) for x in fh.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _bindable(port: int) -> bool:
    """Nothing uses ``port`` on any address (no listener, connection or TIME_WAIT socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free TCP port outside the ephemeral range, not handed out before in this process.

    Falls back to a kernel-chosen port (still never one handed out before) when the ephemeral
    range leaves no room below it."""
    eph_low, eph_high = ephemeral_range()
    with _lock:
        if eph_low - LOW >= 1000:
            candidates = list(range(LOW, eph_low))
            start = _rng.randrange(len(candidates))
            for port in candidates[start:] + candidates[:start]:
                if port not in _given and _bindable(port):
                    _given.add(port)
                    return port
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError(
        f"no free TCP port found ({LOW}-{eph_low - 1} and the ephemeral range "
        f"{eph_low}-{eph_high} are in use): stop other servers on this machine"
    )
