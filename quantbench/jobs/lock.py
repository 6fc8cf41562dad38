"""One grid per results directory: the grid's Snakemake process holds an exclusive lock on
``<results_dir>/.quantbench.lock`` from its start (the onstart handler, before any job is
submitted) to its exit, whatever the exit: the lock is an ``fcntl.flock`` on the open file, which
the kernel releases when the process ends (a SIGKILL included), so a lock is never stale. The file
says who holds it (pid, host, start time, working directory, grid) and is cleared when the grid
ends (onsuccess/onerror); a second grid on the same results directory is refused naming that
holder, and a grid that finds the record of a holder killed before its end takes the lock over,
saying whose it was. (flock is per host on local file systems; on NFS v4
Linux maps it to a byte-range lock that the server enforces across hosts.)"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from quantbench.errors import ConfigError

LOCK_FILE = ".quantbench.lock"


class ResultsLock:
    """The lock of one results directory, held while this object's file is open."""

    def __init__(self, results_dir: str | Path, grid: str) -> None:
        self.path = Path(results_dir) / LOCK_FILE
        self.grid = grid
        self.file: IO[str] | None = None
        self.previous: dict | None = None  # the holder whose lock this one took over, if any
        self.unsupported = ""  # why the lock could not be taken on this file system, if it could not

    def acquire(self) -> ResultsLock:
        """Take the lock, or raise a ConfigError naming its holder. The holder's record is written
        only once the lock is ours (a refused grid leaves the file as it was)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 (held open for the grid's lifetime)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(f)
            f.close()
            raise ConfigError(f"results_dir {self.path.parent}: another grid is running on it ({_describe(holder)}; "
                              f"lock file {self.path}); wait for it to end, or give this grid another results_dir"
                              ) from None
        except OSError as e:  # a file system without locks (ENOLCK, EOPNOTSUPP): the grid runs unlocked
            f.close()
            self.unsupported = (f"results_dir {self.path.parent} cannot be locked ({e}): not locked against a "
                                f"second grid")
            return self
        self.previous = _holder(f) or None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "cwd": os.getcwd(), "grid": self.grid,
                            "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}) + "\n")
        f.flush()
        self.file = f
        return self

    def release(self) -> None:
        """Give the lock up at the grid's end, clearing the holder's record: only a grid whose
        process ended without this (killed) leaves its record for the next one to take over."""
        if self.file is not None:
            self.file.truncate(0)
            self.file.flush()
            fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
            self.file.close()
            self.file = None

    def took_over(self) -> str:
        """A line about the holder before this one, whose process ended without releasing it ("" if none)."""
        if not self.previous:
            return ""
        return f"took over the results_dir lock of an ended grid ({_describe(self.previous)})"


def _holder(f: IO[str]) -> dict:
    f.seek(0)
    try:
        return json.loads(f.read() or "{}")
    except json.JSONDecodeError:
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return (f"grid {holder.get('grid', '?')!r}, pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')} in {holder.get('cwd', '?')}")
