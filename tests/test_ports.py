"""tests/ports.py: server ports never come from the ephemeral range and are never handed out
twice (a port taken between the pick and the server's bind was a flake source)."""

from __future__ import annotations

import socket

import ports
from conftest import free_port


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    low, _ = ports.ephemeral_range()
    got = [free_port() for _ in range(50)]
    assert len(set(got)) == 50
    assert all(ports.LOW <= p < low for p in got), got
    for p in got[:5]:  # each one can really be listened on
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", p))
            s.listen(1)


def test_a_port_in_use_is_skipped(monkeypatch):
    """Of two candidates, the one a server listens on is skipped; with both used up the
    fallback is a kernel-chosen port, still one not handed out before."""
    busy, spare = ports.free_port(), ports.free_port()
    before = set(ports._given)
    monkeypatch.setattr(ports, "_given", before - {busy, spare})
    monkeypatch.setattr(ports, "LOW", min(busy, spare))
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (max(busy, spare) + 1000, 60999))
    real = ports._bindable
    monkeypatch.setattr(ports, "_bindable", lambda p: p in (busy, spare) and real(p))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", busy))
        server.listen(1)
        assert ports.free_port() == spare
        fallback = ports.free_port()
    assert fallback not in before | {busy, spare}
