"""MLflow record: parallel writers to one SQLite store lose nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from quantbench.jobs.runs import flatten
from quantbench.tracking import Tracker

WRITER = textwrap.dedent("""
    import sys
    from quantbench.tracking import Tracker
    uri, exp_id, worker, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tracker = Tracker(uri)
    for i in range(n):
        run_id = tracker.start_run(exp_id, f"w{worker}-{i}", {"worker": str(worker), "i": str(i)},
                                   {"cell_id": f"w{worker}/{i}"})  # as a job: opened at its start, closed at its end
        tracker.finish_run(run_id, {"value": worker * 100 + i}, [("step", float(s), s) for s in range(20)], {}, [])
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


class _Server:
    """A throwaway HTTP server on a free loopback port, answering every request with ``status``
    (this test's own, stopped at the end; never a service of the machine)."""

    def __init__(self, status: int) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.server.seen.append(self.headers.get("Authorization"))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b'{"experiments": []}')

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.seen = []
        self.uri = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_server_check_names_the_uri_and_the_refusal(monkeypatch):
    import base64
    import time

    import pytest

    from quantbench.errors import TrackingError
    from quantbench.tracking import check_server

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "writer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with _Server(401) as server, pytest.raises(TrackingError, match=rf"{server.uri} refused user 'writer'"):
        check_server(server.uri)
    assert server.httpd.seen == ["Basic " + base64.b64encode(b"writer:wrong").decode()]  # one try: no retry on 401
    with _Server(200) as server:
        check_server(server.uri)  # passes
    with _Server(503) as server, pytest.raises(TrackingError, match=rf"{server.uri} is unreachable \(3 tries"):
        check_server(server.uri, attempts=3)
    assert len(server.httpd.seen) == 3
    with _Server(200) as server:
        closed = server.uri  # nothing listens there once the server is gone
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=rf"{closed} is unreachable \(2 tries.*start it"):
        check_server(closed, attempts=2, timeout=1.0)
    assert time.monotonic() - t0 < 10  # bounded: one pause of 1 s between the two tries
    check_server("sqlite:///nowhere.db")  # not a server: nothing to check


def test_a_creation_retried_by_the_client_leaves_one_run(tmp_path, monkeypatch):
    """MLflow's HTTP client retries POSTs too; a retry after the server wrote the run makes a twin."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracker.ensure_experiment("e")
    create = tracker.client.create_run

    def create_twice(*args, **kwargs):
        create(*args, **kwargs)  # written by the server, answer lost
        return create(*args, **kwargs)  # the retry

    monkeypatch.setattr(tracker.client, "create_run", create_twice)
    run_id = tracker.start_run(exp, "cell", {"a": "1"}, {"cell_id": "c"})
    live = tracker.client.search_runs([exp])
    assert [r.info.run_id for r in live] == [run_id]
    assert len(tracker.client.search_runs([exp], run_view_type=3)) == 2  # the twin is deleted, not lost from view
