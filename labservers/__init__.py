"""Private database servers on loopback for the test suite and the benchmarks: a MariaDB server
(:mod:`labservers.mariadb`) and a multi-primary Galera cluster of them (:mod:`labservers.galera`),
each in its own temporary directory.  Development tools, not part of the installed package:
they block, poll and run subprocesses, which the daemon never does."""
