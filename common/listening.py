"""Listening sockets for the services: bound before the app starts, and a port that cannot be
had is one clear line naming it and the variable that set it, not a chain of tracebacks."""

from __future__ import annotations

import socket

from common.environment import refuse

BACKLOG = 2048


def listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """Bind and listen now, so "listening" is true once it is logged: the kernel queues
    connections until the server accepts them, right after the app's startup."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_or_exit(
    service: str, host: str, port: int, variables: str, backlog: int = BACKLOG
) -> socket.socket:
    try:
        return listen(host, port, backlog)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        refuse(service, f"cannot listen on {host}:{port} ({variables}): {reason}")
