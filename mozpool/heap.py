"""The cyclic garbage collector and a large pool.

A daemon serving 10,000 devices holds about half a million objects made at start-up (the pool in
memory, the simulated pool, routes and schemas) that live as long as it does.  CPython's full
collection traverses every tracked object, and a burst of requests, which leaves many young
objects alive for a while, triggers one often: 1,000 concurrent ``any`` requests saw a 250-350 ms
pause every half second, more than half the burst.  :func:`freeze_start_up` moves what start-up
made into the collector's permanent generation (:func:`gc.freeze`), so later collections
traverse only what came after, and makes collections rarer; objects made later are collected
as before.  Frozen objects that become garbage are still freed by reference counting; only a
cycle among them would stay.
"""

from __future__ import annotations

import gc

from mozpool.logconfig import Logger

log = Logger()


#: Collection thresholds once start-up is frozen (CPython's default is (700, 10, 10)): a young
#: generation of 10,000 objects instead of 700, and a full pass after 100 middle-generation
#: passes instead of 10.  With few long-lived objects left in sight, the default made a full
#: pass of the burst's own live objects (100-250 ms) several times a second.
THRESHOLDS = (10_000, 20, 100)


def freeze_start_up() -> int:
    """Collect once, then freeze every surviving object and set :data:`THRESHOLDS`; how many
    objects are frozen now."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    frozen = gc.get_freeze_count()
    log.info("{n} objects made at start-up frozen out of the garbage collector's full passes", n=frozen)
    return frozen
