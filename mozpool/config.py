"""Configuration: an INI file ($MOZPOOL_CONFIG or --config, template config.ini.dist) with
command-line overrides applied on top."""

from __future__ import annotations

import configparser
import os
import socket
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from mozpool.broker.warmsettings import WarmSettings, warm_settings
from mozpool.inventory.settings import InventorySettings, inventory_settings


class ConfigError(ValueError):
    """A configuration value is missing or invalid."""


@dataclass
class Config:
    fqdn: str = ""
    ipaddress: str = ""
    port: int = 8010
    listen_host: str = "0.0.0.0"
    db_url: str = "sqlite:///mozpool.sqlite"
    log_retention_days: float = 14.0
    request_retention_days: float = 7.0
    tftp_port: int = 69
    tftp_root: str = "/var/lib/tftpboot"
    #: TFTP transfers at once, and per client address (0: no per-client limit); the defaults are
    #: mozpool.bmm.tftp's DEFAULT_MAX_TRANSFERS and DEFAULT_MAX_TRANSFERS_PER_CLIENT
    tftp_max_transfers: int = 128
    tftp_max_transfers_per_client: int = 8
    #: TFTP worker processes that send large files (0: all in the daemon's process); default one per CPU
    tftp_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: microseconds a TFTP worker polls for the next datagram before it sleeps (0: never); the
    #: default is mozpool.bmm.tftp.worker's DEFAULT_BUSY_POLL
    tftp_busy_poll_us: int = 200
    #: also write each device's PXE config under <tftp root>/pxelinux.cfg/ (TFTP serves them from memory)
    tftp_pxe_files: bool = True
    time_scale: float = 1.0
    fakes: int = 0
    manhole_endpoint: str = ""
    manhole_username: str = "admin"
    manhole_password: str = ""
    manhole_allow_remote: bool = False
    #: a Twisted endpoint string for the API (e.g. ssl:8443:...), instead of port/listen_host
    http_endpoint: str = ""
    #: PEM CA certificates that other servers' TLS certificates are verified against
    ca_certs: str = ""
    #: "required", "open", or "" for the default (open only when listening on loopback)
    auth_mode: str = ""
    anonymous_read: bool = True
    #: simulated-device failures from --fail: (device or None for all, phase, probability)
    fail: list[tuple[str | None, str, float]] = field(default_factory=list)
    #: whole simulated boards' faults from --fail-board: BOARD:MODE[:P] (mozpool.fakes.boardfaults)
    fail_board: list[str] = field(default_factory=list)
    #: the raw parser, for sections later capabilities add (inventory, fakes faults, ...)
    extra: configparser.ConfigParser = field(default_factory=configparser.ConfigParser, repr=False)
    #: [inventory]: the inventory sync's source and interval (mozpool.inventory.settings)
    inventory: InventorySettings = field(default_factory=InventorySettings)
    #: [warm_pool]: idle devices kept imaged ahead of demand (mozpool.broker.warmsettings)
    warm_pool: WarmSettings = field(default_factory=WarmSettings)

    @property
    def effective_auth_mode(self) -> str:
        """The configured mode, else ``open`` when the API listens on loopback only."""
        from mozpool.endpoints import listening_interface
        from mozpool.web.auth import default_mode

        if self.auth_mode:
            return self.auth_mode
        if self.http_endpoint:
            interface = listening_interface(self.http_endpoint)
            return default_mode("127.0.0.1" if interface is None else interface)  # a unix socket is local
        return default_mode(self.listen_host)

    @property
    def server_fqdn(self) -> str:
        """This server's name: configured, or derived from the host and port."""
        if self.fqdn:
            return self.fqdn
        if self.fakes:
            host = self.listen_host if self.listen_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        else:
            host = socket.gethostname()
        return host if self.port == 80 else f"{host}:{self.port}"


#: INI (section, key) -> Config attribute
_KEYS = {
    ("server", "fqdn"): "fqdn",
    ("server", "ipaddress"): "ipaddress",
    ("server", "port"): "port",
    ("server", "listen_host"): "listen_host",
    ("database", "url"): "db_url",
    ("database", "log_retention_days"): "log_retention_days",
    ("database", "request_retention_days"): "request_retention_days",
    ("tftp", "port"): "tftp_port",
    ("tftp", "root"): "tftp_root",
    ("tftp", "max_transfers"): "tftp_max_transfers",
    ("tftp", "max_transfers_per_client"): "tftp_max_transfers_per_client",
    ("tftp", "workers"): "tftp_workers",
    ("tftp", "busy_poll_us"): "tftp_busy_poll_us",
    ("tftp", "pxe_files"): "tftp_pxe_files",
    ("paths", "tftp_root"): "tftp_root",
    ("testing", "time_scale"): "time_scale",
    ("testing", "fakes"): "fakes",
    ("manhole", "endpoint"): "manhole_endpoint",
    ("manhole", "username"): "manhole_username",
    ("manhole", "password"): "manhole_password",
    ("manhole", "allow_remote"): "manhole_allow_remote",
    ("server", "endpoint"): "http_endpoint",
    ("server", "ca_certs"): "ca_certs",
    ("auth", "mode"): "auth_mode",
    ("auth", "anonymous_read"): "anonymous_read",
}


def _convert(name: str, raw: Any) -> Any:
    kind = {f.name: f.type for f in fields(Config)}[name]
    if name in ("fail", "fail_board"):
        return list(raw)
    try:
        if kind == "int":
            value = int(raw)
            if value < 0:
                raise ValueError("negative")
            return value
        if kind == "float":
            value = float(raw)
            if not value >= 0:
                raise ValueError("negative")
            return value
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid value for {name}: {raw!r}") from None
    return str(raw)


def load_config(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``path`` (default ``$MOZPOOL_CONFIG``; none is fine), then apply ``overrides``
    (Config attribute -> value, None meaning 'not given')."""
    path = path or os.environ.get("MOZPOOL_CONFIG") or None
    parser = configparser.ConfigParser()
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"configuration file {path} does not exist")
        parser.read(path)
    config = Config(extra=parser)
    for (section, key), attr in _KEYS.items():
        if parser.has_option(section, key):
            setattr(config, attr, _convert(attr, parser.get(section, key)))
    for attr, value in (overrides or {}).items():
        if value is not None:
            setattr(config, attr, _convert(attr, value))
    if config.tftp_max_transfers < 1:
        raise ConfigError("[tftp] max_transfers must be at least 1")
    if config.http_endpoint:
        from mozpool.endpoints import listening_interface

        try:
            listening_interface(config.http_endpoint)
        except ValueError as e:
            raise ConfigError(f"[server] endpoint: {e}") from None
    if config.ca_certs and not os.path.isfile(config.ca_certs):
        raise ConfigError(f"[server] ca_certs: no such file {config.ca_certs}")
    if config.auth_mode not in ("", "required", "open"):
        raise ConfigError(f"[auth] mode must be required or open, not {config.auth_mode!r}")
    try:
        config.inventory = inventory_settings(parser)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        config.warm_pool = warm_settings(parser)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.manhole_endpoint and not config.manhole_password:
        raise ConfigError("[manhole] password is required when the manhole is enabled")
    return config
