"""A non-loopback IPv4 address of this machine, for tests of what binds where."""

from __future__ import annotations

import socket


def non_loopback_ipv4() -> str | None:
    """An address other hosts (and kubelet, in a pod) could dial; None when there is none.

    Connecting a UDP socket sends nothing; it only asks the kernel which source address it
    would route from. Tries a documentation and a private destination, so no default
    route is needed for one of them to answer.
    """
    for destination in ("192.0.2.1", "10.255.255.255", "172.16.0.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((destination, 9))
            except OSError:
                continue
            address = str(probe.getsockname()[0])
        if not address.startswith("127.") and address != "0.0.0.0":  # noqa: S104
            return address
    try:
        candidates = socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        return None
    return next((a for a in candidates if not a.startswith("127.")), None)
