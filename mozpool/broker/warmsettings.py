"""``[warm_pool]``: how many idle devices to keep imaged ahead of demand (issue 14, item 3).

Read by :mod:`mozpool.config`; used by :mod:`mozpool.broker.warm`.  Pure parsing, so the
configuration can be checked without starting anything.

Syntax (keys are case-insensitive, like every INI key here)::

    [warm_pool]
    android = 4              # 4 idle pristine devices holding android, in any environment
    android@prod = 2         # and 2 more in environment prod
    b2g = 2
    b2g.b2gbase = http://builds.example.com/b2g/latest    # the image's boot_config keys
    max_concurrent = 2       # warm imagings at once on one server
    interval = 60            # seconds between passes (scaled by time_scale)

or, instead of fixed targets::

    auto = true              # images most requested in the last hour, in proportion
    spares = 10%             # how many devices to keep warm: a number, or a share of the pool
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass

SECTION = "warm_pool"
#: keys of the section that are settings, not image targets
SETTINGS = ("auto", "spares", "max_concurrent", "interval")
DEFAULT_MAX_CONCURRENT = 2
DEFAULT_INTERVAL = 60.0
DEFAULT_SPARES_FRACTION = 0.1


@dataclass(frozen=True)
class Target:
    """Keep ``count`` idle pristine devices holding ``image`` (with the configured boot config)
    in ``environment`` ("any": in any environment), counted over the whole pool."""

    image: str
    environment: str
    count: int


@dataclass(frozen=True)
class WarmSettings:
    targets: tuple[Target, ...] = ()
    #: image -> {boot_config key: value}: what warm devices of the image are imaged with
    boot_configs: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    auto: bool = False
    #: auto: devices to keep warm over the whole pool (None: ``spares_fraction`` of it)
    spares: int | None = None
    spares_fraction: float = DEFAULT_SPARES_FRACTION
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    #: nominal seconds between passes (scaled by time_scale)
    interval: float = DEFAULT_INTERVAL

    @property
    def enabled(self) -> bool:
        return self.auto or any(t.count > 0 for t in self.targets)

    def boot_config_values(self, image: str) -> dict[str, str]:
        return dict(dict(self.boot_configs).get(image, ()))


def _count(key: str, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"[warm_pool] {key} must be a whole number of devices, not {text!r}")
    return value


def warm_settings(parser: configparser.ConfigParser) -> WarmSettings:
    """The section's settings; ValueError naming the key when one is wrong."""
    if not parser.has_section(SECTION):
        return WarmSettings()
    own = {k: v for k, v in parser.items(SECTION, raw=True) if k not in parser.defaults()}
    targets: list[Target] = []
    configs: dict[str, dict[str, str]] = {}
    for key, value in own.items():
        if key in SETTINGS:
            continue
        if "." in key:
            image, _, field = key.partition(".")
            if not image or not field:
                raise ValueError(f"[warm_pool] {key}: expected IMAGE.KEY = VALUE (a boot_config key of the image)")
            configs.setdefault(image, {})[field] = value.strip()
            continue
        image, _, environment = key.partition("@")
        if not image or ("@" in key and not environment):
            raise ValueError(f"[warm_pool] {key}: expected IMAGE = N or IMAGE@ENVIRONMENT = N")
        targets.append(Target(image, environment or "any", _count(key, value)))
    text = own.get("auto", "false").strip().lower()
    if text not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise ValueError(f"[warm_pool] auto must be true or false, not {own['auto']!r}")
    auto = text in ("1", "true", "yes", "on")
    if auto and any(t.count for t in targets):
        raise ValueError("[warm_pool] auto = true keeps spares by demand: leave out the fixed targets "
                         f"({', '.join(f'{t.image}@{t.environment}' for t in targets if t.count)})")
    spares, fraction = None, DEFAULT_SPARES_FRACTION
    raw = own.get("spares", "").strip()
    if raw.endswith("%"):
        try:
            fraction = float(raw[:-1]) / 100
        except ValueError:
            fraction = -1.0
        if not 0 <= fraction <= 1:
            raise ValueError(f"[warm_pool] spares must be a number of devices or a percentage, not {raw!r}")
    elif raw:
        spares = _count("spares", raw)
    max_concurrent = _count("max_concurrent", own.get("max_concurrent", str(DEFAULT_MAX_CONCURRENT)))
    if max_concurrent < 1:
        raise ValueError("[warm_pool] max_concurrent must be at least 1")
    try:
        interval = float(own.get("interval", str(DEFAULT_INTERVAL)))
    except ValueError:
        interval = 0.0
    if not interval > 0:
        raise ValueError(f"[warm_pool] interval must be a positive number of seconds, not {own.get('interval')!r}")
    return WarmSettings(
        tuple(targets),
        tuple((image, tuple(sorted(values.items()))) for image, values in sorted(configs.items())),
        auto, spares, fraction, max_concurrent, interval,
    )
