"""Keep WebRTC on 127.0.0.1: opt-in patches of aioice for tests and benchmarks.

aioice leaves loopback out of its host candidates, so two peers on one machine with no other
interface never connect. These patches make 127.0.0.1 the only host address, ignore remote
candidates elsewhere (a browser's NIC address, an mDNS name) and drop datagrams from anywhere
else, so nothing leaves the machine. Never used by the server itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aioice.ice

LOOPBACK = "127.0.0.1"


@contextmanager
def loopback_only_ice() -> Iterator[None]:
    ice = aioice.ice
    original_addresses = ice.get_host_addresses
    original_datagram = ice.StunProtocol.datagram_received
    original_add = ice.Connection.add_remote_candidate

    def datagram_from_loopback(self, data, addr) -> None:
        if addr[0] == LOOPBACK:
            original_datagram(self, data, addr)

    async def add_loopback_candidate(self, candidate) -> None:
        if candidate is None or candidate.host == LOOPBACK:
            await original_add(self, candidate)

    ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: [LOOPBACK]
    ice.StunProtocol.datagram_received = datagram_from_loopback
    ice.Connection.add_remote_candidate = add_loopback_candidate
    try:
        yield
    finally:
        ice.get_host_addresses = original_addresses
        ice.StunProtocol.datagram_received = original_datagram
        ice.Connection.add_remote_candidate = original_add
