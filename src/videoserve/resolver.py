"""Host names of outbound URLs (webhooks, `input_reference`) resolved with a deadline, off the
loop's shared thread pool.

Why not `loop.getaddrinfo`: it runs libc's getaddrinfo in the loop's default executor, a few
threads shared with every `asyncio.to_thread`, and a thread cannot be cancelled. A name whose
DNS server never answers holds its thread for the system resolver's whole timeout, so a dozen
such names in submits stalled every other request's lookup (issue 23: 0.1 s became 57.9 s).
c-ares (through `aiodns`) reads the same /etc/resolv.conf and /etc/hosts, but sends its queries
from sockets watched by one event thread: a lookup that never answers costs its own request
only, and giving up on it frees nothing because it held nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import aiodns


class Unresolvable(Exception):
    """The host has no address, or none came within the timeout; the message says which."""


class Resolver:
    """Resolves host names for one purpose, on its own c-ares channel.

    One per purpose (webhooks, input images), so a flood of one kind cannot even share a
    channel with the other. The channel belongs to the event loop that first used it; a use
    from another loop (tests build many apps) gets a channel of its own."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._channel: aiodns.DNSResolver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def addresses(self, host: str, port: int) -> list[str]:
        """The distinct addresses `host` resolves to for a TCP connection to `port`.

        `Unresolvable` when the name has none or the answer takes longer than `timeout`."""
        literal = _numeric(host)
        if literal is not None:
            return [literal]
        channel = self._channel_for(asyncio.get_running_loop())
        try:
            async with asyncio.timeout(self.timeout):
                found = await channel.getaddrinfo(host, port=port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise Unresolvable(
                f"host {host!r} could not be resolved in {self.timeout:g} s"
            ) from None
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            why = ": its DNS servers did not answer" if code == aiodns.error.ARES_ETIMEOUT else ""
            raise Unresolvable(f"host {host!r} could not be resolved{why}") from exc
        except (UnicodeError, ValueError, RuntimeError) as exc:  # a name c-ares cannot encode
            raise Unresolvable(f"host {host!r} could not be resolved") from exc
        addresses = (_text(node.addr[0]) for node in found.nodes)
        return list(dict.fromkeys(addresses))

    def _channel_for(self, loop: asyncio.AbstractEventLoop) -> aiodns.DNSResolver:
        if self._channel is None or self._loop is not loop:
            self._channel = aiodns.DNSResolver(loop=loop)
            self._loop = loop
        return self._channel

    async def close(self) -> None:
        """Drop the channel (queries in flight end); a later lookup opens a new one."""
        channel, self._channel, self._loop = self._channel, None, None
        if channel is not None:
            await channel.close()


def _numeric(host: str) -> str | None:
    """The address a numeric host stands for, as libc's getaddrinfo reads it: IPv6 and IPv4
    literals, and the old IPv4 forms (`2130706433`, `127.1`, `0x7f.1`) that c-ares would send
    to DNS as names instead."""
    bare = host.strip("[]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(bare))
    except (OSError, UnicodeError, ValueError):
        return None


def _text(address: str | bytes) -> str:
    return address.decode("ascii") if isinstance(address, bytes) else address
