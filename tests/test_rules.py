"""
The process-model rules of DESIGN.md, checked over the source of mozpool/.

The daemon is one reactor and no threads of its own: nothing under mozpool/ may
start threads or processes behind the reactor's back, sleep, or use blocking
sockets. This reads the code with ``ast`` so that comments, docstrings and strings
that merely mention these names do not count, and import aliases do.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "mozpool"

# Importing any of these (or a submodule) is a violation.
FORBIDDEN_MODULES = {
    "threading": "starts threads",
    "_thread": "starts threads",
    "multiprocessing": "starts processes",
    "concurrent.futures": "starts threads",
    "subprocess": "blocking child processes; use reactor.spawnProcess",
    "requests": "blocking HTTP; use treq",
    "urllib.request": "blocking HTTP; use treq",
    "twisted.internet.threads": "runs code in threads",
}

# Using any of these fully qualified names (after resolving import aliases).
FORBIDDEN_NAMES = {
    "time.sleep": "sleeps the reactor; use task.deferLater on an injected clock",
    "socket.socket": "blocking socket; use the reactor's endpoints",
    "socket.create_connection": "blocking socket; use the reactor's endpoints",
    "socket.create_server": "blocking socket; use the reactor's endpoints",
    "os.system": "blocking child process; use reactor.spawnProcess",
    "os.popen": "blocking child process; use reactor.spawnProcess",
    "os.fork": "child process outside the reactor; use reactor.spawnProcess",
}

# Attributes that are a violation whatever object they hang off (reactor.callInThread,
# threads.deferToThread, self.reactor.getThreadPool().callInThread, ...).
FORBIDDEN_ATTRIBUTES = {
    "deferToThread": "runs code in a thread",
    "deferToThreadPool": "runs code in a thread",
    "callInThread": "runs code in a thread",
    "callMultipleInThread": "runs code in a thread",
}


def _matches(name: str, forbidden: str) -> bool:
    return name == forbidden or name.startswith(forbidden + ".")


class _Checker(ast.NodeVisitor):
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[str] = []
        # local name -> fully qualified name it stands for
        self.aliases: dict[str, str] = {}

    def _report(self, node: ast.AST, what: str, why: str) -> None:
        line = getattr(node, "lineno", 0)
        self.problems.append(f"{self.filename}:{line}: {what} ({why})")

    def _checkModule(self, node: ast.AST, module: str) -> bool:
        for forbidden, why in FORBIDDEN_MODULES.items():
            if _matches(module, forbidden):
                self._report(node, f"imports {module}", why)
                return True
        return False

    def _checkName(self, node: ast.AST, qualified: str) -> None:
        for forbidden, why in FORBIDDEN_NAMES.items():
            if _matches(qualified, forbidden):
                self._report(node, f"uses {qualified}", why)
                return

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._checkModule(node, alias.name)
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.aliases[top] = top
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        reported = node.level == 0 and self._checkModule(node, module)
        for alias in node.names:
            qualified = f"{module}.{alias.name}" if module else alias.name
            if node.level == 0 and not reported:
                # "from urllib import request", "from time import sleep"
                self._checkModule(node, qualified)
                self._checkName(node, qualified)
            if alias.name in FORBIDDEN_ATTRIBUTES:
                self._report(node, f"imports {alias.name}", FORBIDDEN_ATTRIBUTES[alias.name])
            self.aliases[alias.asname or alias.name] = qualified
        self.generic_visit(node)

    def _dotted(self, node: ast.expr) -> str | None:
        """``a.b.c`` with ``a`` resolved through the imports, or None."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.aliases:
            return None
        parts.append(self.aliases[node.id])
        return ".".join(reversed(parts))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in FORBIDDEN_ATTRIBUTES:
            self._report(node, f"uses .{node.attr}", FORBIDDEN_ATTRIBUTES[node.attr])
        # Names from "from x import y" were judged at the import; here the
        # "module.attribute" forms, with module aliases resolved.
        qualified = self._dotted(node)
        if qualified is not None:
            self._checkName(node, qualified)
            self._checkModule(node, qualified)
            # Only the outermost attribute of a chain is checked.
            return
        self.generic_visit(node)


def check(source: str, filename: str) -> list[str]:
    """Every rule violation in one module's source, as "file:line: what (why)"."""
    tree = ast.parse(source, filename=filename)
    checker = _Checker(filename)
    checker.visit(tree)
    return checker.problems


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


#: The client's blocking façade runs in its caller's process (a CI job's script), never in the
#: daemon (issue 13 asks for it): it waits between polls. It still starts no thread or process.
ALLOWED = {"mozpool/client/sync.py": ("time.sleep",)}


def allowed(problem: str) -> bool:
    filename = problem.split(":", 1)[0]
    return any(f"uses {what}" in problem for what in ALLOWED.get(filename, ()))


class CheckerTests(SynchronousTestCase):
    """The checker itself catches what it must and only that."""

    def assertFlags(self, source: str, *fragments: str) -> None:
        problems = check(source, "x.py")
        self.assertEqual(len(problems), len(fragments), problems)
        for problem, fragment in zip(problems, fragments):
            self.assertIn(fragment, problem)

    def test_forbiddenImports(self) -> None:
        self.assertFlags("import threading", "x.py:1: imports threading")
        self.assertFlags("\nimport subprocess as sp", "x.py:2: imports subprocess")
        self.assertFlags("from requests import get", "imports requests")
        self.assertFlags("import requests.adapters", "imports requests.adapters")
        self.assertFlags("from urllib import request", "imports urllib.request")
        self.assertFlags("import urllib.request", "imports urllib.request")
        self.assertFlags("from concurrent.futures import ThreadPoolExecutor", "concurrent")
        self.assertFlags(
            "from twisted.internet.threads import deferToThread",
            "imports twisted.internet.threads",
            "imports deferToThread",
        )

    def test_forbiddenCalls(self) -> None:
        self.assertFlags("import time\ntime.sleep(1)", "x.py:2: uses time.sleep")
        self.assertFlags("import time as t\nt.sleep(1)", "uses time.sleep")
        self.assertFlags("from time import sleep\nsleep(1)", "x.py:1: uses time.sleep")
        self.assertFlags("import socket\nsocket.socket()", "uses socket.socket")
        self.assertFlags(
            "import socket\nsocket.create_connection(('h', 1))", "uses socket.create_connection"
        )
        self.assertFlags("from socket import socket as S\nS()", "x.py:1: uses socket.socket")
        self.assertFlags("reactor.callInThread(f)", "uses .callInThread")
        self.assertFlags("threads.deferToThread(f)", "uses .deferToThread")
        self.assertFlags("import os\nos.system('ls')", "uses os.system")

    def test_allowed(self) -> None:
        """Comments, strings, and harmless neighbours of forbidden names pass."""
        self.assertFlags(
            '"""Never import threading or call time.sleep()."""\n'
            "# import subprocess; time.sleep(1); socket.socket()\n"
            "import time, socket, os\n"
            "from twisted.internet import task\n"
            "x = 'requests.get(url)'\n"
            "now = time.time()\n"
            "family = socket.AF_INET\n"
            "socket.inet_aton('127.0.0.1')\n"
            "os.path.join('a', 'b')\n"
            "reactor.spawnProcess(p, 'fping', ['fping'])\n"
            "reactor.callFromThread(f)\n"
            "def sleep(n): return task.deferLater(clock, n, lambda: None)\n"
            "sleep(1)\n"
        )


class RulesTests(SynchronousTestCase):
    def test_sourcesFound(self) -> None:
        """The scan covers the real package, so the rules test cannot pass vacuously."""
        files = sources()
        self.assertIn(PACKAGE / "__init__.py", files)
        self.assertGreater(len(files), 0)

    def test_noThreadsNoBlocking(self) -> None:
        """Nothing under mozpool/ uses threads, subprocess, sleep or blocking sockets."""
        problems: list[str] = []
        root = PACKAGE.parent
        files = sources()
        self.assertNotEqual(files, [])
        for path in files:
            source = path.read_text(encoding="utf-8")
            problems.extend(p for p in check(source, str(path.relative_to(root))) if not allowed(p))
        if problems:
            self.fail("DESIGN.md process-model rules broken:\n" + "\n".join(problems))


#: Benchmarks allowed to import tests/, each with its reason (none: the private MariaDB and
#: Galera launchers both use live in labservers/).
BENCH_IMPORTING_TESTS: set[str] = set()


class BenchmarkTests(SynchronousTestCase):
    def test_benchmarks_do_not_import_tests(self) -> None:
        """bench/ stands on mozpool/ alone: a benchmark never depends on the test suite's helpers."""
        problems: list[str] = []
        bench = PACKAGE.parent / "bench"
        files = sorted(p for p in bench.glob("*.py") if p.name not in BENCH_IMPORTING_TESTS)
        self.assertNotEqual(files, [])
        for path in files:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                problems += [f"bench/{path.name}:{node.lineno}: imports {n}" for n in names
                             if n == "tests" or n.startswith("tests.")]
        self.assertEqual(problems, [])


#: Modules whose SQL lives in their layer's queries module (issue 16's clean-up).
NO_INLINE_SQL = ("broker/service.py", "bmm/facade.py", "statemachine/core.py")


class LayeringTests(SynchronousTestCase):
    def test_no_inline_sql(self) -> None:
        """The broker service, the BMM facade and the machine core run SQL only through their
        layer's queries module: no string in them starts a statement."""
        problems: list[str] = []
        for name in NO_INLINE_SQL:
            path = PACKAGE / name
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    head = node.value.lstrip().split(" ", 1)[0].upper()
                    if head in ("SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE"):
                        problems.append(f"mozpool/{name}:{node.lineno}: {node.value[:60]!r}")
        self.assertEqual(problems, [])
