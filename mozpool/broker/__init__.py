"""MozPool, the request layer (what the seed calls "MozPool"): matches requests to devices,
claims them, asks LifeGuard to prepare them, retries elsewhere on failure and expires requests.

- :mod:`mozpool.broker.machine`: the request state machine (Automat table + MachineKind)
- :mod:`mozpool.broker.selection`: device matching and the claim
- :mod:`mozpool.broker.lifeguard`: the please_* POST to the device's LifeGuard
- :mod:`mozpool.broker.service`: :class:`Broker` (IBroker) and :class:`BrokerService`, its driver
- :mod:`mozpool.broker.queries`: the SQL of creating, renewing and expiring requests
"""
