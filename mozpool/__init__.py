"""MozPool on Twisted: a device-pool manager for labs of untrustworthy phones and boards.

Three layers live in one process: ``broker`` (what the original called MozPool: requests),
``lifeguard`` (one state machine per device) and ``bmm`` (relays, PXE, TFTP, ping, SUT agent).
"""

__version__ = "0.1.0"
