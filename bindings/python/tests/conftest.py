"""Test setup: import the package from this checkout (no pip install needed)
and provide a real `rserpool registrar` process."""

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
REPO = HERE.parent.parent.parent

#: Generous: these tests must pass on a loaded 2-core machine.
DEADLINE_S = 60.0


def registrar_binary() -> str:
    env = os.environ.get("RSERPOOL_BIN")
    if env:
        return env
    for profile in ("debug", "release"):
        p = REPO / "target" / profile / "rserpool"
        if p.exists():
            return str(p)
    pytest.fail("no rserpool binary: run `cargo build` or set RSERPOOL_BIN")


class Registrar:
    """`rserpool registrar --asap tcp://127.0.0.1:0` as a child process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [registrar_binary(), "registrar", "--asap", "tcp://127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: "queue.Queue[str | None]" = queue.Queue()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        end = time.monotonic() + DEADLINE_S
        self.url = None
        while self.url is None:
            try:
                line = lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                err = self.proc.stderr.read() if self.proc.stderr else ""
                pytest.fail(f"registrar did not start: {err}")
            if line.startswith("listening asap "):
                self.url = line[len("listening asap "):].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE_S)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture(scope="module")
def registrar():
    r = Registrar()
    try:
        yield r
    finally:
        r.stop()
