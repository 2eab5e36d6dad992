"""
A private multi-primary MariaDB Galera cluster on loopback, for the tests and benchmarks.

Each node is a :class:`labservers.mariadb.PrivateMariaDB` of its own (datadir, socket,
SQL port under one temporary directory) with the wsrep provider loaded: Debian's
``galera-4`` (``/usr/lib/galera/libgalera_smm.so``), group communication, IST and
rsync state-transfer ports of its own on 127.0.0.1.  The first node bootstraps the cluster
(``--wsrep-new-cluster``) and gets the test user; the others join it and receive the whole
datadir by rsync (SST), user included.  Nothing outside the directory is configured, and
nothing needs root (as root, mariadbd runs with ``--user=root`` as for the single server).

Use from a trial test::

    from labservers.galera import galeraCluster, galeraURLs

    cluster = galeraCluster(self)      # the process-wide 3-node cluster (skips without galera-4)
    urls = galeraURLs(self)            # one fresh database, its URL on each node, dropped at cleanup

    cluster.nodes[2].isolate()         # the node leaves the primary component (non-primary)
    cluster.nodes[2].rejoin()

Like the single server, this is test support: it blocks, polls and uses subprocess.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import signal
import tempfile
import time
import unittest
from typing import Any

import pymysql

from labservers import mariadb
from labservers.mariadb import HOST, PrivateMariaDB, _ci, _freePort, _removeAbandoned, _scratch

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
CLUSTER_NAME = "mozpool-test"
#: How long a node may take to reach Synced after its server answers (SST included).
SYNC_TIMEOUT = 120.0
_PREFIX = mariadb._PREFIX + "galera-"

#: Failure detection a little quicker than the defaults (suspect 5 s, inactive 15 s), so a
#: node cut off from the others turns non-primary within a few seconds in the tests.
_EVS = "evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;evs.inactive_check_period=PT0.5S;evs.keepalive_period=PT0.5S"


def galeraUnavailableReason() -> str | None:
    """Why there is no Galera cluster to test against, or None."""
    reason = mariadb.mariadbUnavailableReason()
    if reason is not None and not os.environ.get("MOZPOOL_TEST_MYSQL_URL"):
        return reason
    if mariadb._serverBinary() is None or mariadb._installBinary() is None:
        return "MariaDB not installed (apt-get install mariadb-server)"
    if not os.path.exists(PROVIDER):
        return f"Galera not installed ({PROVIDER} missing): apt-get install galera-4"
    if shutil.which("rsync") is None:
        return "rsync not installed (the nodes' state transfer): apt-get install rsync"
    return None


class GaleraNode(PrivateMariaDB):
    """One node: a private mariadbd with wsrep on, joined to ``cluster``'s addresses."""

    def __init__(self, cluster: "GaleraCluster", index: int) -> None:
        directory = os.path.join(cluster.directory, f"node{index + 1}")
        os.makedirs(directory)
        super().__init__(baseDir=directory)
        self.cluster = cluster
        self.index = index
        self.name = f"node{index + 1}"
        self.port = _freePort()
        self.gcommPort = _freePort()
        self.istPort = _freePort()
        self.sstPort = _freePort()
        self.bootstrap = False

    # -- configuration --------------------------------------------------------

    def _serverArgs(self) -> list[str]:
        peers = ",".join(f"{HOST}:{n.gcommPort}" for n in self.cluster.nodes)
        options = f"gmcast.listen_addr=tcp://{HOST}:{self.gcommPort};ist.recv_addr={HOST}:{self.istPort};{_EVS}"
        args = super()._serverArgs()
        # Galera replicates row events; the binary log itself stays off, as for the single server.
        args += [
            "--wsrep-on=ON",
            f"--wsrep-provider={PROVIDER}",
            f"--wsrep-cluster-name={CLUSTER_NAME}",
            f"--wsrep-cluster-address=gcomm://{peers}",
            f"--wsrep-node-name={self.name}",
            f"--wsrep-node-address={HOST}",
            f"--wsrep-node-incoming-address={HOST}:{self.port}",
            f"--wsrep-sst-receive-address={HOST}:{self.sstPort}",
            "--wsrep-sst-method=rsync",
            f"--wsrep-provider-options={options}",
            "--wsrep-slave-threads=2",
            "--binlog-format=ROW",
            "--innodb-autoinc-lock-mode=2",
            "--default-storage-engine=InnoDB",
        ]
        if self.bootstrap:
            args.append("--wsrep-new-cluster")
        return args

    def _installDB(self) -> None:
        # A joiner's datadir comes whole from its donor (rsync SST); only the first node needs one.
        if self.index == 0:
            super()._installDB()
        else:
            os.makedirs(self.datadir, exist_ok=True)
            os.makedirs(self.tmpdir, exist_ok=True)
            if os.geteuid() == 0:
                # The state transfer's rsync daemon drops root for "nobody" (its default uid):
                # let it write the datadir it receives; mariadbd runs as root and reads it all.
                import pwd

                nobody = pwd.getpwnam("nobody")
                os.chown(self.datadir, nobody.pw_uid, nobody.pw_gid)

    def _createUsers(self) -> None:
        # Replicated to the joiners by their state transfer.
        if self.index == 0:
            super()._createUsers()

    # -- state ------------------------------------------------------------------

    def _root(self) -> pymysql.connections.Connection:
        return pymysql.connect(unix_socket=self.unixSocket, user="root", password="", connect_timeout=5,
                               read_timeout=30, autocommit=True)

    def status(self, name: str) -> str | None:
        """One wsrep status value (e.g. ``wsrep_ready``, ``wsrep_cluster_status``)."""
        conn = self._root()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
                row = cur.fetchone()
        finally:
            conn.close()
        return None if row is None else str(row[1])

    def waitFor(self, name: str, value: str, timeout: float = SYNC_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last: str | None = None
        while time.monotonic() < deadline:
            try:
                last = self.status(name)
            except pymysql.err.MySQLError as e:
                last = repr(e)
            if last == value:
                return
            if not self.running:
                raise RuntimeError(f"{self.name} exited:\n" + self._logTail())
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: {name} is {last!r}, not {value!r}, after {timeout:.0f} s:\n"
                           + self._logTail())

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def isolate(self) -> None:
        """Cut this node off from the others (Galera's ``gmcast.isolate``): it turns
        non-primary (``wsrep_ready`` OFF), the others keep the primary component."""
        self._provider("gmcast.isolate=1")
        self.waitFor("wsrep_ready", "OFF", 60)

    def rejoin(self) -> None:
        """Undo :meth:`isolate`; returns once the node is Synced again."""
        self._provider("gmcast.isolate=0")
        self.waitFor("wsrep_local_state_comment", "Synced")
        self.waitFor("wsrep_ready", "ON")

    def _provider(self, options: str) -> None:
        conn = self._root()
        try:
            with conn.cursor() as cur:
                cur.execute("SET GLOBAL wsrep_provider_options = %s", (options,))
        finally:
            conn.close()

    def pause(self) -> None:
        """SIGSTOP: the server hangs (sockets stay open, nothing answers)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


class GaleraCluster:
    """``size`` nodes on loopback: the first bootstraps, the others join one at a time."""

    def __init__(self, size: int = 3) -> None:
        reason = galeraUnavailableReason()
        if reason is not None:
            raise RuntimeError(reason)
        scratch = _scratch()
        # Named like the single server's directories, so its clean-up of those left by killed
        # test processes takes these too (the nodes died with their owner: PDEATHSIG).
        _removeAbandoned(scratch or tempfile.gettempdir())
        self.directory = tempfile.mkdtemp(prefix=_PREFIX, dir=scratch)
        with open(os.path.join(self.directory, "owner.pid"), "w") as f:
            f.write(str(os.getpid()))
        self.nodes: list[GaleraNode] = []
        for i in range(size):
            self.nodes.append(GaleraNode(self, i))
        self._counter = itertools.count(1)

    def start(self) -> None:
        first = self.nodes[0]
        first.bootstrap = True
        first.start()
        first.waitFor("wsrep_ready", "ON")
        # Restarting the first node later must join the others, not found a second cluster.
        first.bootstrap = False
        for node in self.nodes[1:]:
            node.start()
            node.waitFor("wsrep_local_state_comment", "Synced")
            node.waitFor("wsrep_ready", "ON")
        size = first.status("wsrep_cluster_size")
        if size != str(len(self.nodes)):
            raise RuntimeError(f"cluster size {size}, wanted {len(self.nodes)}")

    def urls(self, database: str) -> list[str]:
        return [node.url(database) for node in self.nodes]

    def createDatabase(self) -> tuple[str, list[str]]:
        """A fresh empty database (DDL replicates): its name and its URL on each node."""
        name = f"mozpool_g{os.getpid()}_{next(self._counter)}"
        self.nodes[0].dropDatabase(name)
        self.nodes[0].createDatabase(name)
        return name, self.urls(name)

    def dropDatabase(self, name: str) -> None:
        """Heal the cluster, end the database's connections on every node, drop it."""
        self.ensureHealthy()
        for node in self.nodes:
            _killConnections(node, name)
        self.nodes[0].dropDatabase(name)

    def ensureHealthy(self) -> None:
        """After a test that isolated, paused or stopped a node: every node running, Synced."""
        for node in self.nodes:
            if node.running:
                try:
                    node.resume()
                except ProcessLookupError:
                    pass
                if node.status("wsrep_ready") != "ON":
                    node.rejoin()
            else:
                node.start()
                node.waitFor("wsrep_local_state_comment", "Synced")

    def close(self) -> None:
        try:
            for node in reversed(self.nodes):
                try:
                    node.resume()
                except (ProcessLookupError, AssertionError):
                    pass
                node.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _killConnections(node: GaleraNode, name: str) -> None:
    conn = node._root()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                        (name,))
            for (thread,) in cur.fetchall():
                try:
                    cur.execute(f"KILL CONNECTION {int(thread)}")
                except pymysql.err.OperationalError:
                    pass
    finally:
        conn.close()


# -- the process-wide cluster ---------------------------------------------------

_cluster: GaleraCluster | None = None
_startError: BaseException | None = None
#: Tries to start the cluster, each on freshly chosen ports.
START_ATTEMPTS = 3


def getGaleraCluster(size: int = 3) -> GaleraCluster | None:
    """The process-wide cluster, started on first use and stopped at exit; None when Galera
    is not installed, except under CI=true where that is an error."""
    global _cluster, _startError
    if _cluster is not None:
        return _cluster
    if _startError is not None:
        raise RuntimeError(f"private Galera cluster failed to start earlier: {_startError}")
    reason = galeraUnavailableReason()
    if reason is not None:
        if _ci():
            raise RuntimeError(f"CI=true but {reason}")
        return None
    atexit.register(_shutdown)
    # Ports are chosen free before the nodes start, and another process (a parallel test's
    # daemon) may take one first: a cluster that fails to start is tried again on new ports.
    for attempt in itertools.count(1):
        cluster = GaleraCluster(size)
        try:
            cluster.start()
        except BaseException as e:
            cluster.close()
            if attempt < START_ATTEMPTS and isinstance(e, Exception):
                continue
            _startError = e
            raise
        _cluster = cluster
        return cluster


def _shutdown() -> None:
    global _cluster
    if _cluster is not None:
        try:
            _cluster.close()
        finally:
            _cluster = None


def galeraCluster(testcase: unittest.TestCase) -> GaleraCluster:
    """The cluster, healthy; healed again at cleanup (a test may isolate or pause a node)."""
    cluster = getGaleraCluster()
    if cluster is None:
        raise unittest.SkipTest(galeraUnavailableReason() or "Galera unavailable")
    cluster.ensureHealthy()
    testcase.addCleanup(cluster.ensureHealthy)
    return cluster


def galeraURLs(testcase: unittest.TestCase) -> list[str]:
    """A fresh empty database for this test, as its ``mysql://`` URL on each node."""
    cluster = galeraCluster(testcase)
    name, urls = cluster.createDatabase()
    testcase.addCleanup(cluster.dropDatabase, name)
    return urls


def describe(cluster: GaleraCluster) -> dict[str, Any]:
    """Status of every node, for failure messages."""
    found: dict[str, Any] = {}
    for node in cluster.nodes:
        try:
            found[node.name] = {k: node.status(k) for k in ("wsrep_ready", "wsrep_cluster_status",
                                                           "wsrep_local_state_comment", "wsrep_cluster_size")}
        except Exception as e:  # noqa: BLE001 - a report, not a check
            found[node.name] = repr(e)
    return found
