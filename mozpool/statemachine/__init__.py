"""What the two persisted state machines share (LifeGuard's devices, MozPool's requests).

The database row is the truth: every event loads the row, feeds one input, writes the new state,
deadline and counters, and only then runs the new state's entry action.  One event at a time
per machine; a driver feeds ``timeout`` to this server's machines whose deadline has passed.
"""
