"""The seams between the HTTP API and the layers that act: MozPool's broker, LifeGuard and BMM.

The API validates everything it can from the database and the body, then calls one method of one
of these collaborators, defined in their own layers (imports go downward only) and gathered here.
Each method returns a Deferred; the two exceptions are the only failures the API turns into a
status of its own (anything else is a 500, i.e. a bug).
"""

from mozpool.bmm.interfaces import IBMM
from mozpool.broker.interfaces import DeviceHeld, IBroker, RequestSpec
from mozpool.health.interfaces import IHealth
from mozpool.lifeguard.interfaces import ILifeGuard, StateMismatch

__all__ = ["IBMM", "IBroker", "IHealth", "ILifeGuard", "DeviceHeld", "RequestSpec", "StateMismatch"]
