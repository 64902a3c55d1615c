"""A real Faktory for the tests and the benchmark, started from ../shared/bin/faktory.

That binary is Faktory 1.9.4 (see ../shared/bin/README.md); it is not part of switchd,
which never ships or starts Faktory. It runs its own `redis-server` child (Debian's
package, which `make test` installs) on a unix socket in its data folder. RealFaktory
starts it on 127.0.0.1 with a random password, free ports and throwaway data and config
folders, and stops it by its pid, checking that the redis child is gone too. Faktory
writes /tmp/redis.conf on its first start (upstream behaviour).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARY = Path(__file__).resolve().parents[2] / "shared" / "bin" / "faktory"
START_SECONDS = 30.0
STOP_SECONDS = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def missing() -> str | None:
    """Why no real Faktory can be started here, or None when one can."""
    if not BINARY.exists():
        return f"no Faktory binary at {BINARY}"
    if shutil.which("redis-server") is None:
        return "Faktory needs redis-server on PATH (`make test` installs Debian's redis-server)"
    return None


class RealFaktory:
    """One Faktory process on 127.0.0.1 and its redis child."""

    def __init__(self) -> None:
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.redis_pid: int | None = None
        self._folder: Path | None = None

    @property
    def url(self) -> str:
        """Its FAKTORY_URL."""
        return f"tcp://:{self.password}@127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start Faktory and wait until it greets on its port; RuntimeError if it does not."""
        problem = missing()
        if problem:
            raise RuntimeError(problem)
        self._folder = Path(tempfile.mkdtemp(prefix="switchd-faktory-"))
        data, conf = self._folder / "data", self._folder / "conf"
        conf.mkdir()
        self.port = free_port()
        log = (self._folder / "faktory.log").open("wb")
        argv = [str(BINARY), "-b", f"127.0.0.1:{self.port}", "-w", f"127.0.0.1:{free_port()}"]
        argv += ["-e", "development", "-d", str(data), "-c", str(conf)]
        env = {**os.environ, "FAKTORY_PASSWORD": self.password}
        with log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_SECONDS
        while not self._greets():
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = self.log()
                self.stop()
                raise RuntimeError(f"Faktory did not start: {output[-2000:]}")
            time.sleep(0.05)
        self.redis_pid = self._child_pid()

    def _greets(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(3) == b"+HI"
        except OSError:
            return False

    def _child_pid(self) -> int | None:
        assert self.process is not None
        tasks = Path(f"/proc/{self.process.pid}/task")
        children = [int(p) for t in tasks.iterdir() for p in (t / "children").read_text().split()]
        return children[0] if children else None

    def pids(self) -> list[int]:
        """The pids of Faktory and its redis child, while they run."""
        if self.process is None:
            return []
        return [self.process.pid, *([self.redis_pid] if self.redis_pid else [])]

    def log(self) -> str:
        """What Faktory printed so far."""
        assert self._folder is not None
        return (self._folder / "faktory.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM by pid, wait, then make sure its redis child is gone; remove the folders.
        RuntimeError if either outlived its grace (both are killed first)."""
        problems = []
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                problems.append(f"Faktory (pid {self.process.pid}) ignored SIGTERM")
        if self.redis_pid is not None and not _gone(self.redis_pid, STOP_SECONDS):
            os.kill(self.redis_pid, signal.SIGKILL)
            problems.append(f"its redis-server (pid {self.redis_pid}) outlived it")
        self.process = self.redis_pid = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        if problems:
            raise RuntimeError("; ".join(problems))


def _gone(pid: int, within: float) -> bool:
    """Whether process `pid` exits (or is a zombie) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False
