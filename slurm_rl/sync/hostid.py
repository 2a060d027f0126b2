"""Which processes can use the same-host fast path with each other."""

from __future__ import annotations

import functools
import hashlib
import os
import socket


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """`<hostname>-<digest>` where the digest covers the kernel boot id and the network namespace.

    Two processes with equal ids share a kernel (memfd descriptors can pass between them) and a
    network namespace (they can reach each other's abstract Unix socket), which is exactly what the
    shm transport needs. Containers on one host with separate namespaces get different ids, and a
    rebooted node gets a new one.
    """
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id",):
        try:
            with open(path) as f:
                parts.append(f.read().strip())
        except OSError:
            parts.append("no-boot-id")
    try:
        parts.append(str(os.stat("/proc/self/ns/net").st_ino))
    except OSError:
        parts.append("no-netns")
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]
    name = socket.gethostname().split(".")[0] or "host"
    return f"{name}-{digest}"
