"""Health intelligence (issue 15): why a device or request is where it is (explain), and how
long each phase of a boot takes across the pool (boot telemetry).

It reads what the lower layers record -- the state history and failure summaries of
:mod:`mozpool.db.history`, the boot rows of :mod:`mozpool.db.boots`, and the machines' own Automat
tables -- and is read by the web layer through :class:`~mozpool.health.interfaces.IHealth`.
"""
