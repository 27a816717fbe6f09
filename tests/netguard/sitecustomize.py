"""Refuses cloud-metadata lookups in every Python process that imports it at start-up.

Tests and benchmarks that start Ray put this folder on PYTHONPATH first: Ray probes
169.254.169.254 and metadata.google.internal when it starts, and carmp's tests and
benchmarks talk to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
from typing import Any

REFUSED_PREFIXES = ("169.254.", "fe80:")
REFUSED_NAMES = ("metadata", "metadata.google.internal", "instance-data")


def refused(host: object) -> bool:
    name = host.decode() if isinstance(host, bytes) else str(host)
    name = name.strip("[]").lower().rstrip(".")
    return name.startswith(REFUSED_PREFIXES) or name in REFUSED_NAMES \
        or name.endswith(".internal")


def _guard(original: Any) -> Any:
    def guarded(address: Any, *args: Any, **kwargs: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if refused(host):
            raise OSError(f"carmp's test network guard refused {host!r} (cloud metadata)")
        return original(address, *args, **kwargs)

    guarded.carmp_guard = True  # type: ignore[attr-defined]
    return guarded


def guard_children() -> None:
    """Put this folder first on PYTHONPATH, so that every Python process started from now
    on (Ray's among them) imports this module, and so installs the guard, as it starts."""
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH")) if p)


def install() -> None:
    if getattr(socket.getaddrinfo, "carmp_guard", False):
        return
    socket.getaddrinfo = _guard(socket.getaddrinfo)
    socket.create_connection = _guard(socket.create_connection)
    original_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if refused(host):
            raise OSError(f"carmp's test network guard refused {host!r} (cloud metadata)")
        original_connect(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]


install()
