"""BMM, the layer that touches hardware: ProXR relay boards (relay.py), the SUT agent (sut.py),
ping (ping.py), PXE config files (pxe.py) and the TFTP server that serves them (tftp/); facade.py
is what LifeGuard and the HTTP API use.  Every operation fires its Deferred within its bound."""
