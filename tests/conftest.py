"""Starts real `tern` brokers for the integration tests and gives tests a handle on them."""

import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERN_BIN = os.environ.get("TERN_BIN", os.path.join(ROOT, "target", "release", "tern"))


def wait_for(cond, timeout=40, what="condition"):
    """Polls `cond` until it holds; a liveness bound, not a timing assertion."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One `tern start` process on a free port with its own data directory. With `data_dir`
    None it runs in `cwd` with tern's default data directory (./tern-data)."""

    def __init__(self, data_dir, extra_args=(), cwd=None):
        self.data_dir = data_dir
        self.cwd = cwd
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.proc = None
        log_dir = os.path.dirname(data_dir) if data_dir is not None else cwd
        self.log_path = os.path.join(log_dir, f"tern-{self.port}.log")

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        args = [TERN_BIN, "start", "--listen", self.bootstrap, *self.extra_args]
        if self.data_dir is not None:
            args += ["--data-dir", self.data_dir]
        self.log = open(self.log_path, "ab")
        start_at = self.log.tell()  # only this run's lines count
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.cwd)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tern exited with {self.proc.returncode}:\n{self.read_log()}")
            with open(self.log_path, "rb") as f:
                f.seek(start_at)
                if b"tern ready" in f.read():
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"tern did not get ready:\n{self.read_log()}")

    def stop(self):
        """Clean shutdown (SIGTERM), as an operator would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None

    def kill(self):
        """Crash (SIGKILL): nothing gets flushed or closed."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="tern-tests-") as d:
        yield d


def new_broker(workdir, *extra_args):
    data = os.path.join(workdir, f"data-{uuid.uuid4().hex[:8]}")
    return Broker(data, extra_args)


@pytest.fixture(scope="module")
def broker(workdir):
    """A broker shared by a test module (tests use their own topics)."""
    b = new_broker(workdir).start()
    yield b
    assert b.alive(), f"broker died during the tests:\n{b.read_log()}"
    b.stop()


@pytest.fixture
def fresh_broker(workdir):
    """A broker of the test's own, for tests that restart or crash it."""
    made = []

    def make(*extra_args):
        b = new_broker(workdir, *extra_args).start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.kill()


@pytest.fixture
def topic_name(request):
    return f"{request.node.name[:60].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:6]}"
