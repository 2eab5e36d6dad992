"""Simulated hardware on loopback for ``--fakes N`` and the tests: ProXR boards, SUT agents and
pandas that boot over the daemon's own TFTP and report over its own HTTP API."""
