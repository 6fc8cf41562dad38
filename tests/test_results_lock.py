"""One grid per results directory (quantbench.jobs.lock): a second grid on a results directory in
use is refused naming the holder; a holder's lock ends with its process, a SIGKILL included, and
the next grid takes it over saying whose it was; after a killed grid, `snakemake --unlock` and
the same command again finish it (docs/grids.md, "A killed grid"). A grid killed while MLflow
creates its SQLite store (the first seconds of the first grid on a results directory) leaves a
half-migrated store that MLflow cannot open again: that is not recovered here (issue #43)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from quantbench.errors import ConfigError
from quantbench.jobs.lock import LOCK_FILE, ResultsLock

REPO = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time; from quantbench.jobs.lock import ResultsLock; "
        "lock = ResultsLock(sys.argv[1], 'other').acquire(); print('held', flush=True); time.sleep(300)")


def _holder(results: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(results)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_naming_the_first_and_a_killed_one_is_taken_over(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(ConfigError) as refused:
            ResultsLock(tmp_path, "mine").acquire()
        said = str(refused.value)
        assert f"results_dir {tmp_path}: another grid is running on it (grid 'other', pid {holder.pid}" in said
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid  # a refusal writes nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = ResultsLock(tmp_path, "mine").acquire()  # the kernel released the killed holder's lock
    assert f"pid {holder.pid}" in lock.took_over() and json.loads((tmp_path / LOCK_FILE).read_text())["grid"] == "mine"
    with pytest.raises(ConfigError, match="grid 'mine'"):  # held by this process's open file: another file is refused
        ResultsLock(tmp_path, "again").acquire()
    lock.release()  # a grid's end: its record cleared, nothing for the next one to take over
    assert ResultsLock(tmp_path, "after").acquire().took_over() == ""


def test_a_file_system_without_locks_runs_the_grid_unlocked_and_says_so(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = ResultsLock(tmp_path, "mine").acquire()
    assert lock.file is None and lock.unsupported == (f"results_dir {tmp_path} cannot be locked ([Errno 37] No locks "
                                                      f"available): not locked against a second grid")


def _snakemake(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), "--cores", "1", *args]


@pytest.mark.slow
def test_two_grids_on_one_results_dir_and_the_recovery_from_a_killed_grid(tmp_path):
    results = tmp_path / "shared-results"
    first, second = tmp_path / "first", tmp_path / "second"
    for workdir, epochs in ((first, 400), (second, 2)):
        workdir.mkdir()
        (workdir / "config.yaml").write_text(yaml.safe_dump({
            "name": workdir.name, "archs": ["lenet300"], "methods": ["rtn"], "budgets": [2], "seeds": [0],
            "reference": {"epochs": epochs}, "results_dir": str(results)}))
    grid = subprocess.Popen(_snakemake(first), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lock_file = results / LOCK_FILE
    for _ in range(600):  # until the first grid holds the lock (its onstart)
        if lock_file.is_file() and f'"pid": {grid.pid}' in lock_file.read_text():
            break
        assert grid.poll() is None, grid.stdout.read()[-3000:]
        time.sleep(0.2)
    refused = subprocess.run(_snakemake(second), capture_output=True, text=True, timeout=600)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "another grid is running on it (grid 'first'" in said, said[-3000:]
    assert f"pid {grid.pid}" in said and not (results / "runs" / "second").exists()

    reference_log = results / "logs/first/digits/lenet300/reference/s0.log"
    for _ in range(600):  # the kill lands mid-training (not while MLflow creates its store: see the module doc)
        if reference_log.is_file() and "train:" in reference_log.read_text():
            break
        assert grid.poll() is None, grid.stdout.read()[-3000:]
        time.sleep(0.2)
    os.killpg(grid.pid, signal.SIGKILL)  # the grid and its running job
    grid.wait()
    assert not (results / "runs/first/digits/lenet300/reference/s0/metrics.json").exists()
    subprocess.run(_snakemake(first, "--unlock"), check=True, capture_output=True, timeout=600)
    rerun = subprocess.run(_snakemake(first), capture_output=True, text=True, timeout=900)
    said = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, said[-3000:]
    assert f"took over the results_dir lock of an ended grid (grid 'first', pid {grid.pid}" in said
    assert (results / "tables/first/digits.md").is_file()
