"""Run a relay as a child process: for tests, the demo and the chaos suite.

:class:`RelayProcess` starts ``python -m dualchannel serve`` on a free loopback port with
a given SQLite file, waits until ``/api/health`` answers, and can SIGKILL it by pid and
restart it on the same port and database (what a crash looks like to clients)::

    with RelayProcess(tmp_path / "relay.db", dev=True) as relay:
        httpx.post(relay.url + "/api/transcription", ...)
        relay.kill()
        relay.restart()

The LiveKit credentials default to the dev server's pair, :data:`DEV_API_KEY` and
:data:`DEV_API_SECRET` (a secret of 32+ characters: PyJWT warns about shorter ones, and
tests turn warnings into errors).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from ..devserver import DEV_API_KEY, DEV_API_SECRET
from ..errors import ConfigurationError, RelayUnavailable

__all__ = ["DEV_API_KEY", "DEV_API_SECRET", "RelayProcess", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class RelayProcess:
    """A relay in a subprocess on ``127.0.0.1``; ``url``, ``pid``, ``kill``, ``restart``."""

    def __init__(
        self,
        database: str | os.PathLike[str],
        *,
        port: int | None = None,
        dev: bool = True,
        webhook_secret: str | None = None,
        livekit_api_key: str | None = DEV_API_KEY,
        livekit_api_secret: str | None = DEV_API_SECRET,
        extra_args: list[str] | None = None,
        log: str | os.PathLike[str] | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.database = Path(database)
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.dev = dev
        self.webhook_secret = webhook_secret
        self.livekit_api_key = livekit_api_key
        self.livekit_api_secret = livekit_api_secret
        self.extra_args = list(extra_args or [])
        self.log_path = Path(log) if log is not None else self.database.with_suffix(".log")
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the relay is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "dualchannel",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--database",
            f"sqlite:///{self.database}",
            "--log-level",
            "warning",
        ]
        if self.dev:
            cmd.append("--dev")
        if self.webhook_secret:
            cmd += ["--webhook-secret", self.webhook_secret]
        if self.livekit_api_key and self.livekit_api_secret:
            cmd += [
                "--livekit-api-key",
                self.livekit_api_key,
                "--livekit-api-secret",
                self.livekit_api_secret,
            ]
        return cmd + self.extra_args

    def start(self) -> Self:
        if self.running:
            raise RuntimeError("the relay is already running")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUALCHANNEL_")}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self._process = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                code = self._process.returncode
                self._reap()
                raise ConfigurationError(
                    f"the relay exited with status {code} while starting; see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=1.0) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.kill()
        raise RelayUnavailable(
            f"the relay did not answer /api/health within {self.startup_timeout} s; "
            f"see {self.log_path}"
        )

    def kill(self) -> None:
        """SIGKILL by pid: no shutdown, no flush — a crash."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
        self._reap()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (graceful: in-flight commits drain, streams close)."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self._process.pid, signal.SIGKILL)
        self._reap()

    def restart(self) -> Self:
        """Start again on the same port and database (after :meth:`kill` or :meth:`stop`)."""
        if self.running:
            self.stop()
        return self.start()

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
