"""MLflow record: parallel writers to one SQLite store lose nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from quantbench.tracking import Tracker, flatten

WRITER = textwrap.dedent("""
    import sys
    from quantbench.tracking import Tracker
    uri, exp_id, worker, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tracker = Tracker(uri)
    for i in range(n):
        tracker.record_run(exp_id, f"w{worker}-{i}", {"worker": str(worker), "i": str(i)},
                           {"value": worker * 100 + i}, [("step", float(s), s) for s in range(20)],
                           {"cell_id": f"w{worker}/{i}"}, [])
""")


def test_parallel_writers_lose_no_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp_id = tracker.ensure_experiment("parallel", tmp_path / "artifacts")
    writers, per_writer = 6, 5
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, uri, exp_id, str(w), str(per_writer)],
                              stderr=subprocess.PIPE, text=True) for w in range(writers)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(errors)
    runs = tracker.runs("parallel")
    assert len(runs) == writers * per_writer
    assert (runs["status"] == "FINISHED").all()
    assert sorted(runs["metrics.value"].astype(int)) == sorted(w * 100 + i for w in range(writers)
                                                               for i in range(per_writer))
    history = tracker.client.get_metric_history(runs["run_id"].iloc[0], "step")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(20))


def test_experiment_creation_is_idempotent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert Tracker(uri).ensure_experiment("e", tmp_path) == Tracker(uri).ensure_experiment("e", tmp_path)


def test_flatten_nested_settings():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": {}}) == {
        "a.b": "1", "a.c.d": "x", "e": "[1, 2]", "f": "{}"}
