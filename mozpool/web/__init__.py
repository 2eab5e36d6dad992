"""The HTTP API: a Klein application over the shared database and the three layers."""
