"""The exceptions mini-ipam answers with. Each one knows its HTTP status.

Exception tree::

    IpamError                   any refusal; answered as {"Err": message}
    ├── InvalidRequest   400    the request is malformed or asks for something impossible
    ├── PoolNotFound     404*   a PoolID that this driver does not hold
    ├── AddressNotFound  404*   releasing an address that is not allocated
    ├── Conflict         409    the subnet or address is held by someone else
    ├── Exhausted        409    no free subnet or address is left
    └── StoreFailed      503    the store did not answer; nothing was changed

(*) answered with status 400, never 404: the engine reads a 404 as "this driver
does not implement the method", which would hide the real message.
"""

from __future__ import annotations


class IpamError(Exception):
    """A request was refused. ``str(error)`` is the message the user sees."""

    status = 500


class InvalidRequest(IpamError):
    """The request is malformed or asks for something that can never be granted."""

    status = 400


class PoolNotFound(IpamError):
    """The PoolID names no pool this driver holds."""

    status = 400


class AddressNotFound(IpamError):
    """The address to release is not allocated in that pool."""

    status = 400


class Conflict(IpamError):
    """The subnet or address is already held."""

    status = 409


class Exhausted(IpamError):
    """Nothing of the requested size is free."""

    status = 409


class StoreFailed(IpamError):
    """The store failed or did not answer in time; the request changed nothing."""

    status = 503
