"""Keep WebRTC on 127.0.0.1: opt-in patches of aioice for tests and benchmarks.

aioice leaves loopback out of its host candidates, so two peers on one machine with no other
interface never connect. These patches make 127.0.0.1 the only host address, ignore remote
candidates elsewhere (a browser's NIC address, an mDNS name) and drop datagrams from anywhere
else, so nothing leaves the machine. Never used by the server itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aioice.ice
from aioice.candidate import Candidate

LOOPBACK = "127.0.0.1"


@contextmanager
def loopback_only_ice() -> Iterator[None]:
    ice = aioice.ice
    original_addresses = ice.get_host_addresses
    original_datagram = ice.StunProtocol.datagram_received
    original_add = ice.Connection.add_remote_candidate

    def loopback_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
        return [LOOPBACK]

    def datagram_from_loopback(self: aioice.ice.StunProtocol, data: bytes | str, addr: tuple[Any, ...]) -> None:
        if addr[0] == LOOPBACK:
            original_datagram(self, data, addr)

    async def add_loopback_candidate(self: aioice.ice.Connection, remote_candidate: Candidate | None) -> None:
        if remote_candidate is None or remote_candidate.host == LOOPBACK:
            await original_add(self, remote_candidate)

    # Patching methods on aioice's classes is the point here; mypy forbids assigning to a method.
    ice.get_host_addresses = loopback_addresses
    ice.StunProtocol.datagram_received = datagram_from_loopback  # type: ignore[method-assign]  # patched on purpose
    ice.Connection.add_remote_candidate = add_loopback_candidate  # type: ignore[method-assign]  # patched on purpose
    try:
        yield
    finally:
        ice.get_host_addresses = original_addresses
        ice.StunProtocol.datagram_received = original_datagram  # type: ignore[method-assign]  # restoring the stock method
        ice.Connection.add_remote_candidate = original_add  # type: ignore[method-assign]  # restoring the stock method
