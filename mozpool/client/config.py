"""Where the client's servers, token and bounds come from: the call's arguments, then the
environment (``$MOZPOOL_SERVERS``, ``$MOZPOOL_TOKEN``, ``$MOZPOOL_TIMEOUT``, ``$MOZPOOL_ASSIGNEE``,
``$MOZPOOL_CA_CERTS``), then the client configuration file (``$MOZPOOL_CLIENT_CONFIG``, or
``$XDG_CONFIG_HOME/mozpool/client.ini``, by default ``~/.config/mozpool/client.ini``)::

    [client]
    servers = https://imaging1.example.com:8443, https://imaging2.example.com:8443
    token = mpt_...
    timeout = 30            ; seconds one call may take, over every server it tries
    attempt_timeout = 10    ; seconds one server may take to answer
    assignee = ci@example.com
    ca_certs = /etc/mozpool/lab-ca.pem
"""

from __future__ import annotations

import configparser
import getpass
import os
import socket
from dataclasses import dataclass
from typing import Iterable, Mapping

from mozpool.client.errors import MozpoolError
from mozpool.serverurl import base_url

#: One call's bound over all servers, and one server's, in seconds.
DEFAULT_TIMEOUT = 30.0
DEFAULT_ATTEMPT_TIMEOUT = 10.0


class ConfigError(MozpoolError):
    """No servers, or an unreadable configuration."""


@dataclass(frozen=True)
class ClientConfig:
    #: base URLs (``http://host:port``), in the order given; calls try them in random order
    servers: tuple[str, ...]
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT
    #: who requests are made for, unless a call names someone
    assignee: str = ""
    #: PEM CA certificates for https servers (None: the system's trust store)
    ca_certs: str | None = None


def server_url(name: str) -> str:
    """A server as given (``host:port``, ``http://host:port/``, ``.../api/``) as its base URL."""
    url = base_url(name.strip()).rstrip("/")
    return url[: -len("/api")] if url.endswith("/api") else url


def split_servers(text: str | Iterable[str]) -> tuple[str, ...]:
    """Comma- or space-separated server names (or a list of them) as distinct base URLs."""
    names = text.replace(",", " ").split() if isinstance(text, str) else [n for n in text if n and n.strip()]
    out: list[str] = []
    for name in names:
        url = server_url(name)
        if url not in out:
            out.append(url)
    return tuple(out)


def config_path(env: Mapping[str, str]) -> str:
    if env.get("MOZPOOL_CLIENT_CONFIG"):
        return env["MOZPOOL_CLIENT_CONFIG"]
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "mozpool", "client.ini")


def default_assignee() -> str:
    """``user@host``, as the original client named its requests."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "mozpool-client"
    return f"{user}@{socket.gethostname()}"


def load(servers: str | Iterable[str] | None = None, token: str | None = None, timeout: float | None = None,
         attempt_timeout: float | None = None, assignee: str | None = None, ca_certs: str | None = None,
         config_file: str | None = None, env: Mapping[str, str] | None = None) -> ClientConfig:
    """The client's settings, each from the first place that has it (see the module docstring);
    :class:`ConfigError` when no servers are named anywhere."""
    env = os.environ if env is None else env
    path = config_file or config_path(env)
    ini = configparser.ConfigParser()
    if config_file or os.path.exists(path):
        try:
            if not ini.read(path, encoding="utf-8"):
                raise ConfigError(f"cannot read the client configuration {path}")
        except configparser.Error as e:
            raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None
    section = ini["client"] if ini.has_section("client") else {}

    def pick(given: object, env_name: str | None, key: str) -> str | None:
        if given is not None:
            return str(given)
        if env_name and env.get(env_name):
            return env[env_name]
        value = section.get(key)
        return value if value else None

    if servers is not None and not isinstance(servers, str):
        server_list = split_servers(servers)
    else:
        server_list = split_servers(pick(servers, "MOZPOOL_SERVERS", "servers") or "")
    if not server_list:
        raise ConfigError(f"no MozPool servers: pass --servers URL[,URL...], set $MOZPOOL_SERVERS, "
                          f"or write 'servers = ...' under [client] in {path}")
    try:
        bound = float(pick(timeout, "MOZPOOL_TIMEOUT", "timeout") or DEFAULT_TIMEOUT)
        attempt = float(pick(attempt_timeout, None, "attempt_timeout") or min(DEFAULT_ATTEMPT_TIMEOUT, bound))
    except ValueError as e:
        raise ConfigError(f"bad timeout: {e}") from None
    if bound <= 0 or attempt <= 0:
        raise ConfigError("timeouts must be positive")
    return ClientConfig(
        servers=server_list,
        token=pick(token, "MOZPOOL_TOKEN", "token"),
        timeout=bound,
        attempt_timeout=min(attempt, bound),
        assignee=pick(assignee, "MOZPOOL_ASSIGNEE", "assignee") or default_assignee(),
        ca_certs=pick(ca_certs, "MOZPOOL_CA_CERTS", "ca_certs"),
    )
