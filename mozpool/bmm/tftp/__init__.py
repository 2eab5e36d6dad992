"""Our embedded read-only TFTP server (spec bmm-protocols.md section 5).

`TFTPServer` is the main-socket protocol, `make_tftp_service` the service the tap starts; packets,
netascii conversion, path confinement and the per-transfer protocol live in the submodules.
"""

from .server import (
    DEFAULT_MAX_BLKSIZE,
    DEFAULT_MAX_TRANSFERS,
    DEFAULT_MAX_TRANSFERS_PER_CLIENT,
    DEFAULT_MAX_WINDOW_BYTES,
    DEFAULT_MAX_WINDOWSIZE,
    DEFAULT_PORT,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    TFTPServer,
    make_tftp_service,
)
from .transfer import ReadTransfer

__all__ = [
    "DEFAULT_MAX_BLKSIZE",
    "DEFAULT_MAX_TRANSFERS",
    "DEFAULT_MAX_TRANSFERS_PER_CLIENT",
    "DEFAULT_MAX_WINDOW_BYTES",
    "DEFAULT_MAX_WINDOWSIZE",
    "DEFAULT_PORT",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "ReadTransfer",
    "TFTPServer",
    "make_tftp_service",
]
