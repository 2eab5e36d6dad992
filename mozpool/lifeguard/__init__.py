"""LifeGuard: one persisted state machine per device (machine.py) that power-cycles, PXE-boots,
images, verifies and health-checks it, and reports imaging results to MozPool (results.py)."""
