"""A local livekit-server for tests and the demo, on loopback, owned by this process.

:class:`LiveKitDevServer` runs the pinned livekit-server binary (built by
``scripts/install-livekit-server.sh``) in ``--dev`` mode with a generated config:

- every socket on 127.0.0.1: the signal/HTTP port (``bind_addresses``) and one UDP port
  for WebRTC (``rtc.udp_port``, muxed). Both are free ports picked at the first
  :meth:`~LiveKitDevServer.start` and kept across :meth:`~LiveKitDevServer.restart`;
- ``rtc.tcp_port: 0`` — the ICE-over-TCP fallback is off, because livekit-server binds
  that port on every interface (it takes no address), and nothing here leaves loopback;
- ``rtc.node_ip: 127.0.0.1``, ``rtc.use_external_ip: false``, loopback candidates on and
  an IP filter of 127.0.0.1/32, so no STUN lookup and no other interface is involved;
- an explicit ``keys:`` map, :data:`DEV_API_KEY` → :data:`DEV_API_SECRET`. Plain ``--dev``
  would use ``devkey: secret``, but PyJWT (under ``livekit-api``) emits
  ``InsecureKeyLengthWarning`` for an HMAC key under 32 bytes, which the test suite turns
  into an error. With ``keys:`` set, ``--dev`` keeps everything else (and no longer binds
  loopback by itself, hence ``bind_addresses``).

The process is ours: it is stopped, killed, paused and resumed by its pid only, and an
``atexit`` hook kills any server this interpreter still owns at exit. Its output goes to
``livekit-server.log`` in the work directory.

Errors: a missing binary raises :class:`~dualchannel.errors.ConfigurationError` (its
message says to run ``scripts/install-livekit-server.sh``); a server that exits or does not
answer in time raises :class:`~dualchannel.errors.LiveKitError` with the tail of its log, as
does signalling a server that is not running.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from .errors import ConfigurationError, LiveKitError

__all__ = [
    "DEV_API_KEY",
    "DEV_API_SECRET",
    "LIVEKIT_SERVER_VERSION",
    "DevServerPorts",
    "LiveKitDevServer",
    "default_binary_path",
    "ensure_livekit_server",
    "find_livekit_server",
    "render_config",
]

logger = logging.getLogger("dualchannel.devserver")

#: The livekit-server release the tests pin (``scripts/install-livekit-server.sh``).
LIVEKIT_SERVER_VERSION = "v1.13.5"
#: API key of the dev server (the same name ``--dev`` uses).
DEV_API_KEY = "devkey"
#: API secret of the dev server: 32+ characters, so PyJWT does not warn (see module doc).
DEV_API_SECRET = "dualchannel-dev-secret-loopback-only-0123456789"

_HOST = "127.0.0.1"
_INSTALL_SCRIPT = "scripts/install-livekit-server.sh"
_INSTALL_HINT = (
    f"run `{_INSTALL_SCRIPT}` (it builds livekit-server {LIVEKIT_SERVER_VERSION} with Go "
    "into the cache), or set LIVEKIT_SERVER_BIN to a livekit-server binary"
)
_LOG_TAIL_BYTES = 4000
# livekit-server v1.13.5 sleeps 100 ms between serving HTTP and accepting a shutdown.
_RUNNING_AFTER_SERVE = 0.15
# Loopback never goes through an HTTP proxy, whatever the environment says.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Servers this interpreter started and has not reaped; killed at exit if still running.
_live: weakref.WeakSet[LiveKitDevServer] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - runs at interpreter exit
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.kill()


def default_binary_path() -> Path:
    """Where ``scripts/install-livekit-server.sh`` puts the binary.

    ``${DUALCHANNEL_CACHE:-${XDG_CACHE_HOME:-~/.cache}/dualchannel}``
    ``/livekit-server-${LIVEKIT_SERVER_VERSION:-v1.13.5}/bin/server``, the same
    environment variables the script reads.
    """
    cache = os.environ.get("DUALCHANNEL_CACHE")
    if not cache:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = str(Path(xdg) / "dualchannel")
    version = os.environ.get("LIVEKIT_SERVER_VERSION") or LIVEKIT_SERVER_VERSION
    return Path(cache) / f"livekit-server-{version}" / "bin" / "server"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_livekit_server() -> Path:
    """The livekit-server binary to run.

    In order: ``$LIVEKIT_SERVER_BIN`` (which must then exist: a wrong setting is an error,
    not a reason to look elsewhere), the install script's cache path
    (:func:`default_binary_path`), ``livekit-server`` on ``PATH``. Raises
    :class:`ConfigurationError` saying how to get one when there is none.
    """
    configured = os.environ.get("LIVEKIT_SERVER_BIN")
    if configured:
        path = Path(configured).expanduser()
        if not _executable(path):
            raise ConfigurationError(
                f"LIVEKIT_SERVER_BIN={configured!r} is not an executable file; "
                f"fix it, or unset it and {_INSTALL_HINT}"
            )
        return path
    cached = default_binary_path()
    if _executable(cached):
        return cached
    on_path = shutil.which("livekit-server")
    if on_path:
        return Path(on_path)
    raise ConfigurationError(
        f"no livekit-server binary found (looked at $LIVEKIT_SERVER_BIN, {cached} and PATH); "
        f"{_INSTALL_HINT}"
    )


def _install_script() -> Path | None:
    # The script ships with the repository, not the wheel: found from a source checkout
    # (editable install) only.
    candidate = Path(__file__).resolve().parent.parent / _INSTALL_SCRIPT
    return candidate if candidate.is_file() else None


def ensure_livekit_server(*, timeout: float = 900.0) -> Path:
    """The binary, building it with the install script first when there is none.

    The first build takes a few minutes (``go install``); later calls return at once.
    Raises :class:`ConfigurationError` when the script is not available (installed from a
    wheel) or fails; its output is in the message.
    """
    if os.environ.get("LIVEKIT_SERVER_BIN"):
        return find_livekit_server()  # set means "use this one": a wrong path is an error
    with contextlib.suppress(ConfigurationError):
        return find_livekit_server()
    script = _install_script()
    if script is None:
        raise ConfigurationError(
            f"no livekit-server binary found, and {_INSTALL_SCRIPT} is not next to this "
            "package (it ships with the source repository); build one with `go install "
            f"github.com/livekit/livekit-server/cmd/server@{LIVEKIT_SERVER_VERSION}` and "
            "set LIVEKIT_SERVER_BIN to it"
        )
    logger.info("livekit_server.build", extra={"script": str(script)})
    try:
        done = subprocess.run(
            ["bash", str(script)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ConfigurationError(f"{_INSTALL_SCRIPT} did not finish in {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise ConfigurationError(
            f"{_INSTALL_SCRIPT} failed (exit {done.returncode}):\n{done.stderr[-_LOG_TAIL_BYTES:]}"
        )
    lines = done.stdout.strip().splitlines()
    built = Path(lines[-1]) if lines else None
    if built is None or not _executable(built):
        raise ConfigurationError(
            f"{_INSTALL_SCRIPT} succeeded but printed no binary path:\n{done.stdout}"
        )
    return built


def _wait_stopped(pid: int, *, timeout: float) -> None:
    """Wait until every thread of ``pid`` is in state T (stopped), as /proc tells."""
    task_dir = Path(f"/proc/{pid}/task")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = [
                (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                for task in task_dir.iterdir()
            ]
        except (OSError, IndexError):
            return  # no /proc (not Linux) or the process is gone: nothing to wait for
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.002)


@dataclass(frozen=True, slots=True)
class DevServerPorts:
    """The loopback ports a dev server listens on."""

    http: int
    """Signal (WebSocket) and HTTP API, TCP."""
    udp: int
    """WebRTC media and data, UDP (one muxed port)."""


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _pick_ports() -> DevServerPorts:
    return DevServerPorts(http=_free_port(socket.SOCK_STREAM), udp=_free_port(socket.SOCK_DGRAM))


def render_config(
    ports: DevServerPorts, *, api_key: str, api_secret: str, log_level: str = "warn"
) -> str:
    """The YAML config for a loopback dev server (written by hand: YAML is not a dependency)."""
    for name, value in (("api_key", api_key), ("api_secret", api_secret)):
        if not value or any(c in value for c in "\n\"'\\:#"):
            raise ConfigurationError(f"{name} must be non-empty, one line, without quotes or ':#'")
    return (
        "# Generated by dualchannel.devserver: loopback only, dev keys.\n"
        f"port: {ports.http}\n"
        "bind_addresses:\n"
        f"  - {_HOST}\n"
        "rtc:\n"
        f"  udp_port: {ports.udp}\n"
        "  tcp_port: 0  # off: livekit-server would bind it on every interface\n"
        "  use_external_ip: false\n"
        f"  node_ip: {_HOST}\n"
        "  enable_loopback_candidate: true\n"
        "  ips:\n"
        "    includes:\n"
        f"      - {_HOST}/32\n"
        "keys:\n"
        f'  "{api_key}": "{api_secret}"\n'
        "logging:\n"
        f"  level: {log_level}\n"
    )


class LiveKitDevServer:
    """One livekit-server process on loopback, started and signalled by this process.

    ::

        with LiveKitDevServer() as server:
            token = mint_token(api_key=server.api_key, api_secret=server.api_secret, ...)
            await room.connect(server.url, token)

    ``start()`` blocks until the server answers HTTP (at most ``startup_timeout`` seconds).
    ``restart()`` keeps the ports and config, so clients can reconnect to the same URL.
    """

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        api_key: str = DEV_API_KEY,
        api_secret: str = DEV_API_SECRET,
        log_level: str = "warn",
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self._binary = Path(binary) if binary is not None else find_livekit_server()
        if not _executable(self._binary):
            raise ConfigurationError(f"{self._binary} is not an executable file; {_INSTALL_HINT}")
        self._own_dir = work_dir is None
        if work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="dualchannel-livekit-"))
        else:
            self._work_dir = Path(work_dir)
            self._work_dir.mkdir(parents=True, exist_ok=True)
        self._api_key = api_key
        self._api_secret = api_secret
        self._log_level = log_level
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._ports: DevServerPorts | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- what clients need ---------------------------------------------------------------

    @property
    def ports(self) -> DevServerPorts:
        if self._ports is None:
            raise LiveKitError("livekit-server has no ports yet; call start() first")
        return self._ports

    @property
    def url(self) -> str:
        """The signal URL for ``livekit.rtc.Room.connect``: ``ws://127.0.0.1:PORT``."""
        return f"ws://{_HOST}:{self.ports.http}"

    @property
    def http_url(self) -> str:
        """The HTTP base URL (health check, Twirp room service API)."""
        return f"http://{_HOST}:{self.ports.http}"

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def api_secret(self) -> str:
        return self._api_secret

    @property
    def pid(self) -> int | None:
        """The running process's pid; None before start and after it was reaped."""
        return self._process.pid if self._process is not None else None

    @property
    def binary(self) -> Path:
        return self._binary

    @property
    def work_dir(self) -> Path:
        return self._work_dir

    @property
    def config_path(self) -> Path:
        return self._work_dir / "livekit.yaml"

    @property
    def log_path(self) -> Path:
        return self._work_dir / "livekit-server.log"

    def running(self) -> bool:
        """True while the process exists (it may be paused)."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, limit: int = _LOG_TAIL_BYTES) -> str:
        """The last ``limit`` bytes of the server's output."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - limit))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it answers HTTP."""
        if self.running():
            raise LiveKitError(f"livekit-server is already running (pid {self.pid})")
        self._reap()
        if self._ports is None:
            self._ports = _pick_ports()
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            render_config(
                self._ports,
                api_key=self._api_key,
                api_secret=self._api_secret,
                log_level=self._log_level,
            )
        )
        self._log = self.log_path.open("ab")
        self._log.write(f"--- starting {self._binary} on {self.url}\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            [str(self._binary), "--dev", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._work_dir,
        )
        _live.add(self)
        logger.info("livekit_server.start", extra={"pid": self.pid, "url": self.url})
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise LiveKitError(
                    f"livekit-server exited with status {code} while starting "
                    f"(config {self.config_path}); its output:\n{self.log_tail()}"
                )
            try:
                with _DIRECT.open(self.http_url, timeout=1.0) as answer:
                    if answer.status == 200:
                        # livekit-server answers HTTP ~100 ms before it marks itself
                        # running; a SIGTERM in between is ignored (its Stop() returns
                        # early), so stop() right after start() would hang till SIGKILL.
                        time.sleep(_RUNNING_AFTER_SERVE)
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise LiveKitError(
                    f"livekit-server did not answer on {self.http_url} within "
                    f"{self.startup_timeout:g} s; its output:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop gracefully: SIGTERM, a second (forcing) SIGTERM, then SIGKILL; by pid.

        livekit-server's first SIGTERM waits for every participant to leave; the second one
        closes rooms with participants still in them. A paused server is resumed first so it
        can see the signals. Does nothing when the server is not running.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
            for sig, wait in ((signal.SIGTERM, 0.5), (signal.SIGTERM, self.stop_timeout)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(wait)
                    break
            else:
                self.kill()
                return
        logger.info("livekit_server.stop", extra={"pid": process.pid})
        self._reap()

    def kill(self) -> None:
        """SIGKILL the process by its pid and reap it. Does nothing when not running."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
            logger.info("livekit_server.kill", extra={"pid": process.pid})
        self._reap()

    def pause(self) -> None:
        """SIGSTOP the process: every socket stays open and nothing answers.

        Returns once every thread is stopped: ``kill`` returns as soon as the signal is
        queued, and a thread busy on another core can run on for a moment.
        """
        pid = self._require_pid()
        os.kill(pid, signal.SIGSTOP)
        _wait_stopped(pid, timeout=2.0)

    def resume(self) -> None:
        """SIGCONT a paused process."""
        os.kill(self._require_pid(), signal.SIGCONT)

    def restart(self) -> None:
        """Stop (or reap a killed process) and start again on the same ports and config."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove the work directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self._work_dir, ignore_errors=True)

    def _require_pid(self) -> int:
        if self._process is None or self._process.poll() is not None:
            raise LiveKitError("livekit-server is not running; call start() or restart()")
        return self._process.pid

    def _reap(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._process = None
            _live.discard(self)
        if self._process is None and self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.url if self._ports is not None else "no ports yet"
        return f"<LiveKitDevServer {where} pid={self.pid}>"
