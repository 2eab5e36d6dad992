"""
A real headless Chromium for the browser tests, and a real daemon for it to look at.

The browser is Debian's ``chromium`` driven through Debian's ``chromedriver`` with Selenium.
Both paths are always given to Selenium (``Service(executable_path=...)`` and
``options.binary_location``), so Selenium Manager never runs and nothing is downloaded at run
time. ``bin/run-tests`` installs the two packages; without them the tests skip, except under
``CI=true``, where a missing browser is a failure (as a missing MariaDB is, see
``labservers/mariadb.py``).

How these tests block, and why
------------------------------

Selenium's calls are blocking HTTP calls to chromedriver. The tests make them **synchronously,
from ``SynchronousTestCase`` methods, and nothing in the test process needs the reactor
meanwhile**:

- the daemon under test is a child process started with :mod:`subprocess` (:class:`BlockingDaemon`),
  its output going to a *file*. ``tests/system/daemon.Daemon`` spawns through the reactor with
  its output on a *pipe* that the reactor drains: with the reactor blocked by Selenium, a chatty
  daemon at ``--time-scale 0.01`` would fill that pipe and stall in ``write()``.
- the tests talk to the daemon's JSON API with blocking :mod:`urllib` calls.

The other way, ``deferToThread`` around each Selenium call from an async test, was rejected: a
Selenium call stuck in a thread cannot be cancelled by trial's test timeout, and the reactor's
thread pool is joined when a trial worker shuts down, so one stuck call would hang a whole
``trial -j2`` run at the end instead of failing one test. It would also buy nothing: the test
has nothing for the reactor to do while it waits for the browser.

Nothing here waits without a bound: :meth:`Browser.wait_for` polls with ``WebDriverWait`` up to
its timeout; page loads, scripts and each chromedriver command have their own timeouts; the
daemon helpers poll with deadlines. A synchronous test is out of reach of trial's ``timeout``
attribute, so these bounds are what keep a broken UI from hanging the run.

Each trial worker is its own process with its own browsers and daemons, so this is safe under
``trial -j2``. :func:`shared` keeps one daemon and browser for the tests of a class within one
worker and closes them (from a timer thread) once no test has used them for a few seconds, or at
exit, so a worker does not carry an idle browser through the rest of the suite.

Environment: ``MOZPOOL_CHROMIUM`` / ``MOZPOOL_CHROMEDRIVER`` point at other binaries;
``MOZPOOL_SCREENSHOTS=1`` has the tests write the README's screenshots into ``docs/``.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, TypeVar

from twisted.trial.unittest import FailTest, SkipTest

import mozpool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mozpool.__file__)))
DOCS = os.path.join(ROOT, "docs")

CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

# Bounds (seconds).
PAGE_LOAD_TIMEOUT = 30
SCRIPT_TIMEOUT = 30
COMMAND_TIMEOUT = 60  # one chromedriver HTTP call
DEFAULT_WAIT = 15

T = TypeVar("T")
_dumps = itertools.count(1)


# -- what is installed --------------------------------------------------------


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _find(env: str, *names: str) -> str | None:
    chosen = os.environ.get(env)
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_binary() -> str | None:
    return _find("MOZPOOL_CHROMIUM", "chromium", "chromium-browser")


def chromedriver_binary() -> str | None:
    path = _find("MOZPOOL_CHROMEDRIVER", "chromedriver")
    if path is None and os.access("/usr/lib/chromium/chromedriver", os.X_OK):
        path = "/usr/lib/chromium/chromedriver"
    return path


def browser_unavailable_reason() -> str | None:
    """Why there is no browser to test with, or None when there is one."""
    missing = []
    if chromium_binary() is None:
        missing.append("chromium")
    if chromedriver_binary() is None:
        missing.append("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        return (f"{' and '.join(missing)} not found; apt-get install chromium chromium-driver "
                "and pip install -e '.[test]' (bin/run-tests does both)")
    return None


def require_browser() -> None:
    """Skip the calling test when there is no browser; under CI=true, fail it."""
    reason = browser_unavailable_reason()
    if reason is None:
        return
    if _ci():
        raise RuntimeError(f"CI=true but {reason}")
    raise SkipTest(reason)


def screenshots_wanted() -> bool:
    return os.environ.get("MOZPOOL_SCREENSHOTS", "").strip().lower() in ("1", "true", "yes")


def _die_with_parent() -> None:
    """Have the kernel end the child if the test process dies without running atexit."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# -- the browser --------------------------------------------------------------


def testid(name: str) -> str:
    """The CSS selector of an element by its ``data-testid`` (see /work/notes/ui-dom.md)."""
    return f'[data-testid="{name}"]'


class Browser:
    """One headless Chromium with a fresh profile, driven by Selenium."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        require_browser()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="mozpool-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = chromium_binary()  # type: ignore[assignment]
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.add_argument(f"--window-size={width},{height}")
        # The console, so that tests can fail on JavaScript errors.
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.log_path = self.profile + "-chromedriver.log"
        # chromedriver (and the browser it ends) goes when this process dies without cleaning up.
        service = Service(executable_path=chromedriver_binary(), log_output=self.log_path,
                          popen_kw={"preexec_fn": _die_with_parent})
        try:
            self.driver = webdriver.Chrome(service=service, options=options)
        except Exception as e:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise RuntimeError(f"headless Chromium did not start ({e}); chromedriver's log: {self.log_path}") from e
        # Each chromedriver call is bounded (Selenium reads this per request; its default is 120 s).
        self.driver.command_executor.client_config.timeout = COMMAND_TIMEOUT
        self.driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
        self.driver.set_script_timeout(SCRIPT_TIMEOUT)
        self.driver.set_window_size(width, height)

    # navigation and lookups

    def get(self, url: str) -> None:
        self.driver.get(url)

    @property
    def url(self) -> str:
        return self.driver.current_url

    def find(self, name: str) -> Any:
        """The element with ``data-testid=name`` (raises NoSuchElementException)."""
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, testid(name))

    def find_all(self, name: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, testid(name))

    def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    # waiting

    def wait_for(self, condition: Callable[[], T], timeout: float = DEFAULT_WAIT, what: str = "condition",
                  poll: float = 0.1) -> T:
        """Poll ``condition()`` until it returns something truthy, and return that. Missing or
        stale elements and failed assertions count as "not yet"; after ``timeout`` seconds fail
        with ``what``, the last value or error, and the page's address."""
        from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                                TimeoutException)
        from selenium.webdriver.support.ui import WebDriverWait

        last: list[Any] = [None]

        def check(_driver: Any) -> Any:
            try:
                value = condition()
            except (NoSuchElementException, StaleElementReferenceException, AssertionError) as e:
                last[0] = e
                return False
            last[0] = value
            return value

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=poll).until(check)
        except TimeoutException:
            evidence = self.dump(os.path.join(os.getcwd(), "browser-failures"))
            raise FailTest(f"timed out after {timeout} s waiting for {what} on {self.url} "
                           f"(last: {last[0]!r}; page saved as {evidence}.png/.html)") from None

    def text_of(self, name: str) -> str:
        return self.find(name).text

    # evidence

    def screenshot(self, path: str, max_height: int = 4000) -> str:
        """Save a PNG of the whole page (not just the window), at most ``max_height`` CSS px tall."""
        import base64

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        size = self.driver.get_window_size()
        width = int(self.js("return document.documentElement.clientWidth"))
        height = int(self.js("return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)"))
        height = min(height, max_height)
        # Lay the page out as if the window were that tall, so nothing is cut or scrolled.
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        try:
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": False,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
            self.driver.set_window_size(size["width"], size["height"])
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return path

    def console_errors(self) -> list[str]:
        """JavaScript errors logged since the last call (SEVERE console entries)."""
        try:
            entries = self.driver.get_log("browser")
        except Exception:
            return []
        return [e.get("message", "") for e in entries if e.get("level") == "SEVERE"]

    def dump(self, directory: str) -> str:
        """A screenshot and the page's HTML in ``directory``, for a failed test's post-mortem;
        returns their common path without the extension."""
        stem = os.path.join(directory, time.strftime("%H%M%S-") + str(next(_dumps)))
        try:
            os.makedirs(directory, exist_ok=True)
            self.driver.save_screenshot(stem + ".png")
            with open(stem + ".html", "w") as f:
                f.write(self.driver.page_source)
        except Exception:
            pass
        return stem

    def quit(self) -> None:
        try:
            self.driver.quit()
        except Exception:
            pass
        shutil.rmtree(self.profile, ignore_errors=True)
        try:
            os.unlink(self.log_path)
        except OSError:
            pass


# -- the daemon -----------------------------------------------------------------


# free_port and free_board_ports: the same as the Twisted system tests'.
from tests.system.daemon import free_board_ports, free_port  # noqa: E402


class HTTPError(FailTest):
    pass


class BlockingDaemon:
    """``twistd -n mozpool --fakes N`` as a child process (output to a file, not a pipe), on
    free loopback ports, with blocking HTTP helpers. The blocking twin of
    ``tests/system/daemon.Daemon``, for tests that hold the reactor (see the module docstring)."""

    def __init__(self, directory: str, fakes: int = 8, time_scale: float = 0.01,
                 extra_args: tuple[str, ...] = (), config: str = "") -> None:
        self.dir = os.path.abspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.tftp_port = free_port(socket.SOCK_DGRAM)
        self.relay_base = free_board_ports(max(1, (fakes + 31) // 32))
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = "sqlite:///" + os.path.join(self.dir, "mozpool.sqlite")
        self.config_path = os.path.join(self.dir, "mozpool.ini")
        with open(self.config_path, "w") as f:
            f.write(f"[fakes]\nrelay_base_port = {self.relay_base}\nseed = 7\n{config}\n")
        self.args = [
            "--config", self.config_path, "--port", str(self.port), "--listen-host", "127.0.0.1",
            "--tftp-port", str(self.tftp_port), "--tftp-root", os.path.join(self.dir, "tftproot"),
            "--db", self.db, "--fqdn", f"127.0.0.1:{self.port}", "--fakes", str(fakes),
            "--time-scale", str(time_scale), *extra_args,
        ]
        self.log_path = os.path.join(self.dir, "twistd.log")
        self.process: subprocess.Popen[bytes] | None = None

    def log_tail(self, limit: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-limit:]
        except OSError:
            return "(no log)"

    def start(self, timeout: float = 30) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("MOZPOOL_CONFIG", None)
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                "mozpool", *self.args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=self.dir, preexec_fn=_die_with_parent,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FailTest(f"daemon exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                code, _ = self.call("GET", "/api/version/", timeout=2)
                if code == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise FailTest("daemon did not answer in time:\n" + self.log_tail())

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def call(self, method: str, path: str, body: Any = None, timeout: float = 20) -> tuple[int, Any]:
        """One HTTP call, redirects not followed: the status and the parsed JSON (or text)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=timeout) as response:
                code, text = response.status, response.read()
        except urllib.error.HTTPError as e:
            code, text = e.code, e.read()
        try:
            return code, json.loads(text) if text else None
        except ValueError:
            return code, text.decode("utf-8", "replace")

    def get(self, path: str) -> Any:
        code, body = self.call("GET", path)
        if code != 200:
            raise HTTPError(f"GET {path}: {code} {body!r}")
        return body

    def wait_for(self, check: Callable[[], T], timeout: float = 60, what: str = "condition") -> T:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.1)
        raise FailTest(f"timed out waiting for {what} (last: {last!r})\n{self.log_tail()}")

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for d in self.get("/api/device/list/?details")["devices"]}

    def device_states(self) -> dict[str, str]:
        return {name: d["state"] for name, d in self.devices().items()}

    def wait_ready(self, names: list[str] | None = None, timeout: float = 60) -> None:
        def ready() -> bool:
            states = self.device_states()
            return bool(states) and all(states.get(n) == "ready" for n in (names or list(states)))

        self.wait_for(ready, timeout, "devices ready")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


# -- one daemon and browser shared by the tests of a class --------------------------------------


class Fixture:
    """A daemon and a browser looking at it."""

    def __init__(self, daemon: BlockingDaemon, browser: Browser) -> None:
        self.daemon = daemon
        self.browser = browser

    def healthy(self) -> bool:
        """The daemon still runs and the browser still answers."""
        if self.daemon.process is None or self.daemon.process.poll() is not None:
            return False
        try:
            self.browser.url
        except Exception:
            return False
        return True

    def close(self) -> None:
        try:
            self.browser.quit()
        finally:
            self.daemon.stop()


IDLE_CLOSE = 10.0  # seconds without a test using it, after which a shared fixture is closed

_lock = threading.Lock()
_fixtures: dict[str, Fixture] = {}
_in_use: dict[str, int] = {}
_timers: dict[str, threading.Timer] = {}
_atexit_registered = False


def _close_if_idle(key: str) -> None:
    with _lock:
        if _in_use.get(key):
            return
        fixture = _fixtures.pop(key, None)
        _timers.pop(key, None)
    if fixture is not None:
        fixture.close()


def _close_all() -> None:
    with _lock:
        fixtures = list(_fixtures.values())
        _fixtures.clear()
        for timer in _timers.values():
            timer.cancel()
        _timers.clear()
    for fixture in fixtures:
        fixture.close()


def shared(test: Any, key: str, make: Callable[[], Fixture]) -> Fixture:
    """The fixture ``key`` of this process, made with ``make()`` on first use. Held for the
    calling test (released at its cleanup); closed after ``IDLE_CLOSE`` seconds unused and at exit.
    If ``make`` fails, the test fails; the next test tries again."""
    global _atexit_registered
    with _lock:
        timer = _timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        fixture = _fixtures.get(key)
        _in_use[key] = _in_use.get(key, 0) + 1
        if not _atexit_registered:
            atexit.register(_close_all)
            _atexit_registered = True

    def release() -> None:
        with _lock:
            _in_use[key] -= 1
            if _in_use[key] == 0 and key in _fixtures:
                timer = threading.Timer(IDLE_CLOSE, _close_if_idle, (key,))
                timer.daemon = True
                _timers[key] = timer
                timer.start()

    test.addCleanup(release)
    if fixture is None or not fixture.healthy():
        if fixture is not None:
            fixture.close()
        fixture = make()
        with _lock:
            _fixtures[key] = fixture
    return fixture
