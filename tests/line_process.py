"""A Python process of its own that a test drives one line at a time on its stdin (a lock holder,
a locker, a writer holding a file open). Of its own because a descriptor in the test's process
would be inherited, and closed (so flushed and unlocked), by every subprocess the test starts;
and because a blocking call in it (a lock wait) must not block the test."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading


ANSWER_TIMEOUT_S = 120.0  # no answer within this long fails the test (every wait is bounded)


class LineProcess:
    """Runs `script` (python -c) with `args`; it says `ready` on its first line when it is."""

    def __init__(self, script: str, *args: object, ready: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        first = self.answer()
        if first != ready:
            self.end()
            raise AssertionError(f"the helper process said {first!r}, not {ready!r}")

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())
        self._lines.put("")  # it ended

    def answer(self, timeout_s: float = ANSWER_TIMEOUT_S) -> str:
        """Its next line ("" once it ended); AssertionError if none comes within `timeout_s`."""
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no answer from the helper process within {timeout_s} s") from None
        if line == "":
            self._lines.put("")  # and every later answer says so too
        return line

    def answered(self) -> bool:
        """Whether an answer (or its end) is there to read, without waiting for one."""
        return not self._lines.empty()

    def do(self, line: str, timeout_s: float = ANSWER_TIMEOUT_S) -> str:
        self.send(line)
        return self.answer(timeout_s)

    def finish(self, timeout_s: float = 30) -> None:
        """End its input: the script ends on its own (what it holds goes with it)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=timeout_s)

    def end(self) -> None:
        """Kill it (a fixture's clean-up: whatever happened)."""
        self.process.kill()
        self.process.wait(timeout=30)


# A process that locks as told on stdin, one command a line, and answers each with "ok",
# "err ERRNO-NAME" or (getlk) "lock TYPE START LEN PID". The calls go straight to libc (ctypes),
# so an interrupted wait shows the kernel's EINTR (Python's own calls would retry it).
LOCKER = r"""
import ctypes, errno, os, signal, sys

class Flock(ctypes.Structure):
    _fields_ = [("l_type", ctypes.c_short), ("l_whence", ctypes.c_short), ("l_start", ctypes.c_longlong),
                ("l_len", ctypes.c_longlong), ("l_pid", ctypes.c_int)]

libc = ctypes.CDLL(None, use_errno=True)
signal.signal(signal.SIGUSR1, lambda *_: None)  # interrupts a wait (no SA_RESTART)
fd = os.open(sys.argv[1], os.O_RDWR)
TYPES = {"r": 0, "w": 1, "u": 2}
F_GETLK, F_SETLK, F_SETLKW, F_OFD_SETLK = 5, 6, 7, 37
print("ready", flush=True)
for line in sys.stdin:
    words = line.split()
    if words[0] == "posix":  # posix r|w|u START LEN wait|nowait
        lock = Flock(TYPES[words[1]], 0, int(words[2]), int(words[3]), 0)
        result = libc.fcntl(fd, F_SETLKW if words[4] == "wait" else F_SETLK, ctypes.byref(lock))
    elif words[0] == "ofd":  # ofd r|w|u START LEN: a lock of the open file description
        lock = Flock(TYPES[words[1]], 0, int(words[2]), int(words[3]), 0)
        result = libc.fcntl(fd, F_OFD_SETLK, ctypes.byref(lock))
    elif words[0] == "getlk":  # getlk r|w START LEN
        lock = Flock(TYPES[words[1]], 0, int(words[2]), int(words[3]), 0)
        result = libc.fcntl(fd, F_GETLK, ctypes.byref(lock))
        if result == 0:
            print(f"lock {'rwu'[lock.l_type]} {lock.l_start} {lock.l_len} {lock.l_pid}", flush=True)
            continue
    elif words[0] == "flock":  # flock sh|ex|un wait|nowait
        op = {"sh": 1, "ex": 2, "un": 8}[words[1]] | (0 if words[2] == "wait" else 4)
        result = libc.flock(fd, op)
    elif words[0] == "write":  # write OFFSET TEXT: a pwrite of TEXT at OFFSET
        data = words[2].encode()
        result = 0 if libc.pwrite(fd, data, len(data), ctypes.c_longlong(int(words[1]))) == len(data) else -1
    elif words[0] == "close":
        os.close(fd)
        result = 0
    print("ok" if result == 0 else f"err {errno.errorcode[ctypes.get_errno()]}", flush=True)
"""


class Locker(LineProcess):
    """A process taking locks on `path` on command (LOCKER): `do` sends one and returns its
    answer; `send` and `answer` split that for a call that blocks."""

    def __init__(self, path) -> None:
        super().__init__(LOCKER, path, ready="ready")
