"""``quantbench`` command line: the jobs Snakemake runs, and the tools people run by hand."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from quantbench.errors import ConfigError, ExamplesError, JobFailed, TrackingError


def _common_job(p: argparse.ArgumentParser, cells: bool = False) -> None:
    p.add_argument("--plan", required=True, type=Path,
                   help="the grid's plan.json (written when the grid starts): every job's identity, and the grid's "
                        "context (experiment, results dir, data root, tracking URI, download, device, published "
                        "figures)")
    which = p.add_mutually_exclusive_group(required=True) if cells else p
    which.add_argument("--job", help="the job's id in the plan (task/arch/method/b<budget>/s<seed>, or "
                                     "task/arch/reference/s<seed>)", **({} if cells else {"required": True}))
    if cells:
        which.add_argument("--batch", metavar="NAME",
                           help="the cells of a batch job (config batch: reference or method), named as the plan "
                                "knows them: a reference's id task/arch/reference/s<seed> (its cells), "
                                "task/arch/<label>/s<seed> (that label's cells of the reference) or a cell's id; "
                                "they run in this one process, a cell whose run finished is restored from it, and "
                                "each cell's metrics.json and log go where the workflow declares them "
                                "(<results>/runs/<experiment>/<cell>/metrics.json, <results>/logs/<experiment>/"
                                "<cell>.log)")
    p.add_argument("--digest", default=None,
                   help="the digest (16 hex digits at least) Snakemake planned for the --job" + (
                       " or the --batch's cells (one cell's own, else of them all: Plan.batch_digest)" if cells
                       else "") + ": the job refuses a plan whose identity differs")
    p.add_argument("--out", type=Path, default=None, required=not cells,
                   help="metrics.json to write (atomically, last)" + ("; with --job" if cells else ""))
    p.add_argument("--log", type=Path, default=None,
                   help="this job's log file: all its output goes there (attached to the MLflow run)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of the job (shared by its processes on a node)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="processes (ranks) per node; with --nnodes above 1 in all, the job runs under torchrun "
                        "(torch.distributed.run) with DistributedDataParallel (quantbench.distributed)")
    p.add_argument("--nnodes", type=int, default=1, help="nodes of the job (each runs this command once)")
    p.add_argument("--rdzv-endpoint", default="",
                   help="host:port of the first node, where the nodes' torchrun launchers meet (--nnodes > 1)")


def _number(text: str, check: Callable[[float], float]) -> float:
    """An option's number, ``check``-ed (a ValueError saying what is allowed becomes argparse's error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        return check(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _size_tolerance(text: str) -> float:
    """``quantbench tables --size-tolerance``: a number in (0, 0.5]."""
    from quantbench.report.summary import check_size_tolerance

    return _number(text, check_size_tolerance)


def _alpha(text: str) -> float:
    """``--alpha``, a test level: a number in (0, 0.5]."""
    from quantbench.report.stats import check_alpha

    return _number(text, check_alpha)


def _margin(text: str) -> float:
    """``--margin``: a number ≥ 0 (accuracy/error: points; perplexity, loss: a fraction of B's value)."""
    from quantbench.report.stats import check_margin

    return _number(text, check_margin)


def _difference(text: str) -> float:
    """``--power``'s true difference: a number above 0, in the metric's units."""
    def check(value: float) -> float:
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"--power: {value:g} is not a difference to detect: a number above 0, in the metric's "
                             f"units (e.g. --power 1.0 for one accuracy point)")
        return value

    return _number(text, check)


def _record_args(p: argparse.ArgumentParser) -> None:
    """Where a record is: an experiment (and its store), or a grid file that names them."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", help="the MLflow experiment (a grid's name)")
    which.add_argument("--grid", type=Path, help="a grid file: its name, results dir, tracking URI and tables.alpha")
    p.add_argument("--results-dir", type=Path, default=None, help="default: the grid's, else results")
    p.add_argument("--tracking-uri", default=None,
                   help="default: the grid's, else MLFLOW_TRACKING_URI, else <results-dir>/mlflow.db")


def _grid(args: argparse.Namespace):
    """The grid ``--grid`` names, loaded once per command (None without one)."""
    if getattr(args, "grid", None) is None:
        return None
    if getattr(args, "_cfg", None) is None:
        from quantbench.config import load_config

        args._cfg = load_config(args.grid)
    return args._cfg


def _record(args: argparse.Namespace) -> tuple[str, str, float]:
    """``(tracking URI, experiment, alpha)`` named by :func:`_record_args`'s options."""
    from quantbench.tracking import resolve_tracking_uri

    alpha, results, uri = 0.05, Path("results"), args.tracking_uri
    experiment = args.experiment
    if (cfg := _grid(args)) is not None:
        experiment, results, alpha = cfg.name, Path(cfg.results), cfg["tables"]["alpha"]
        uri = uri or cfg["tracking_uri"]
    results = args.results_dir or results
    return resolve_tracking_uri(uri, results), experiment, (args.alpha or alpha)


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand with its options (the docs' commands are checked against it)."""
    parser = argparse.ArgumentParser(prog="quantbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate a config and print the grid it plans")
    p.add_argument("config", type=Path)
    p.add_argument("--json", action="store_true",
                   help="print the grid's plan as the grid writes it when it starts (plan.json): every job's "
                        "identity, the skipped cells, the grid's context and the resources")

    p = sub.add_parser("methods", help="list the registered methods (built-in and plugins)")

    p = sub.add_parser("fetch-weights", help="download a grid's pretrained reference weights into the "
                       "libraries' caches (TORCH_HOME, HF_HOME), for offline compute nodes")
    p.add_argument("config", type=Path)

    p = sub.add_parser("plan", help="record a grid's plan.json in its MLflow experiment (creating the store and the "
                                    "experiment once, before the grid's jobs write to them)")
    p.add_argument("plan", type=Path)

    p = sub.add_parser("reference", help="train (or reuse) a reference model: one Snakemake job")
    _common_job(p)

    p = sub.add_parser("cell", help="compress and evaluate one grid cell, or a batch of one reference's cells: "
                       "one Snakemake job")
    _common_job(p, cells=True)
    p.add_argument("--reference", required=True, type=Path, help="the reference job's metrics.json")
    p.add_argument("--artifact", type=Path, default=None, help="the packed model (default: model.qbc by --out)")

    p = sub.add_parser("tables", help="regenerate the tables of an experiment from MLflow")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment")
    which.add_argument("--plan", type=Path,
                       help="a grid's plan.json: its experiment, results dir, tracking URI, tables settings and "
                            "claims (what the grid's tables rule runs)")
    p.add_argument("--results-dir", type=Path, default=None, help="default: the plan's, else results")
    p.add_argument("--tracking-uri", default=None, help="default: the plan's, else MLFLOW_TRACKING_URI, else "
                                                        "<results-dir>/mlflow.db")
    p.add_argument("--out-dir", type=Path, default=None, help="default: <results-dir>/tables/<experiment>")
    p.add_argument("--task", action="append", default=None, help="only these tasks (repeatable)")
    p.add_argument("--size-tolerance", type=_size_tolerance, default=None, metavar="TOL",
                   help="relative: a cell whose achieved bpw is above its budget times 1 + TOL is over budget "
                        "(marked, never bold); the size plots' Pareto front counts sizes within it as equal; "
                        "in (0, 0.5] (config tables.size_tolerance; default: the plan's, else 0.01)")
    p.add_argument("--alpha", type=_alpha, default=None,
                   help="level of the paired tests behind the bold (config tables.alpha; default: the plan's, "
                        "else 0.05)")
    p.add_argument("--claims", type=json.loads, default=None, metavar="JSON",
                   help="the grid's claims (config claims, as JSON): also write <task>_claims.{md,csv}")

    p = sub.add_parser("claims", help="check a grid's claims (config claims) against its record: holds / fails / "
                                      "inconclusive, with the paired differences")
    p.add_argument("--grid", type=Path, required=True, help="the grid file: its claims, name, results and tracking")
    p.add_argument("--results-dir", type=Path, default=None, help="default: the grid's")
    p.add_argument("--tracking-uri", default=None, help="default: the grid's, else MLFLOW_TRACKING_URI, else "
                                                        "<results-dir>/mlflow.db")
    p.add_argument("--alpha", type=_alpha, default=None, help="level of the tests (default: the grid's tables.alpha)")
    p.add_argument("--csv", type=Path, default=None, help="also write the cases as CSV here")

    p = sub.add_parser("compare", help="paired difference of two cells of a record: interval, p-value, verdict")
    _record_args(p)
    p.add_argument("--task", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--budget", type=float, default=None,
                   help="bits per weight (not needed to compare with the reference)")
    p.add_argument("--alpha", type=_alpha, default=None,
                   help="level of the test (default: the grid's tables.alpha, else 0.05)")
    p.add_argument("--margin", type=_margin, default=None, metavar="M",
                   help="also test non-inferiority both ways and equivalence within ±M (two one-sided tests); "
                        "accuracy/error: points; perplexity, loss, bits per token: a fraction of B's value")
    p.add_argument("--power", type=_difference, nargs="?", const=math.nan, default=None, metavar="DIFF",
                   help="also print the difference the seeds run detect at 80 %% power and the seeds needed to "
                        "detect a true difference DIFF (the metric's units)")
    p.add_argument("method_a", metavar="METHOD_A", help="a method label of the grid, or 'reference'")
    p.add_argument("method_b", metavar="METHOD_B")

    p = sub.add_parser("variance", help="where a record's seed-to-seed variance comes from: the seed's shared part "
                                        "(reference, calibration draw) vs a method's own run, per column")
    _record_args(p)
    p.set_defaults(alpha=None)

    p = sub.add_parser("docs-tables", help="rewrite the docs' tables from the table CSVs they name "
                                           "(<!-- table: CSV archs=... methods=... --> blocks)")
    p.add_argument("docs", type=Path, nargs="*", help="default: README.md, docs/grids.md and docs/methods/*.md")
    p.add_argument("--check", action="store_true", help="only list the tables that differ (exit 1 if any)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `quantbench validate x | head` exits quietly
    if getattr(args, "batch", None) is not None:  # a batch job: its cells in this process
        given = [f"--{name}" for name in ("out", "log", "artifact") if getattr(args, name) is not None]
        if given:
            parser.error(f"--batch: {', '.join(given)} not allowed: the plan says where its cells' files go (the "
                         f"workflow's outputs); name one cell with --job to choose them")
        if args.nproc_per_node * args.nnodes > 1:
            parser.error("--batch: a batch of cells runs in one process: --nproc-per-node and --nnodes must be 1 "
                         "(config batch: cell, whose jobs run one cell each with --job, for jobs of several processes)")
        return _run(args)  # each cell's output goes to its own log (runner.run_cells)
    if args.command == "cell" and args.out is None:
        parser.error("--job: a cell job needs --out (or name it with --batch)")
    if args.command in ("reference", "cell"):
        from quantbench.distributed import launched_by_torchrun

        if launched_by_torchrun():  # a rank: its output goes where its launcher's went (the log)
            return _run(args)
        if args.nproc_per_node * args.nnodes > 1:
            args.launch_argv = argv
        if args.log:
            return run_logged(lambda: _run(args), args.log)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ExamplesError, LookupError, FileNotFoundError) as e:
        print(f"quantbench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrackingError as e:  # the store is unreachable or refused us: nothing was computed
        print(f"quantbench {args.command}: error: {e}", file=sys.stderr)
        return 3
    except JobFailed as e:
        print(f"quantbench {args.command}: error: {e}", file=sys.stderr)
        return 1


def run_logged(job: Callable[[], int], path: Path, tail: int = 30) -> int:
    """Run ``job`` with its whole output (Python's and its libraries', stdout and stderr) going to
    its log file ``path``; when it fails (non-zero status or an exception), show the last ``tail``
    lines of that log on the console it was started from, so the error itself is on screen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    status: int | None = None
    try:
        status = job()
        return status
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
        raise
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        if status != 0:
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            print(f"--- end of {path}:", *lines, sep="\n", file=sys.stderr)


def _launch(args: argparse.Namespace, spec) -> int:
    """The launcher of a job of several processes: run this command's ranks under torchrun; when
    one fails (torchrun then stops the others) or this process is signalled, close the run rank 0
    left RUNNING as FAILED or KILLED (:func:`quantbench.jobs.runs.close_left_running`)."""
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from quantbench import distributed
    from quantbench.jobs.runs import close_left_running

    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise ConfigError(f"--nproc-per-node {args.nproc_per_node} --nnodes {args.nnodes}: both must be >= 1")
    cell_id = spec.identity.cell_id
    with tempfile.TemporaryDirectory(prefix="quantbench-launch-") as tmp:
        run_id_file = Path(tmp) / "run_id"
        os.environ[distributed.RUN_ID_FILE_ENV] = str(run_id_file)
        try:
            distributed.launch(args.launch_argv, args.nproc_per_node, args.nnodes, args.rdzv_endpoint)
        except ChildFailedError as e:
            reason = distributed.first_failure(e)
            run_id = close_left_running(spec, run_id_file, "FAILED", reason)
            raise JobFailed(f"{cell_id}: {reason}" + (f"; run {run_id} closed as FAILED" if run_id else "")) from None
        except SignalException as e:
            reason = f"terminated by {signal.Signals(e.sigval).name}"
            run_id = close_left_running(spec, run_id_file, "KILLED", reason)
            print(f"quantbench {args.command}: {cell_id} {reason}" + (f"; run {run_id} closed as KILLED" if run_id
                                                                      else ""), file=sys.stderr)
            raise SystemExit(128 + e.sigval) from None
        finally:
            os.environ.pop(distributed.RUN_ID_FILE_ENV, None)
    return 0


def _run_batch(args: argparse.Namespace) -> int:
    """``quantbench cell --batch``: its cells in this process (:func:`quantbench.jobs.runner.run_cells`; a
    finished one restored from its run), each one's files where the workflow declares them
    (:meth:`Plan.cell_files`) and its output in its own log."""
    from quantbench.jobs import runner
    from quantbench.jobs.plan import Plan

    plan = Plan.load(args.plan)
    cells = plan.batch(args.batch, args.digest)  # the digest of them all, checked
    specs = [plan.spec(job_id) for job_id in cells]
    outs, logs = zip(*(plan.cell_files(job_id) for job_id in cells), strict=True)
    artifacts = [out.parent / "model.qbc" for out in outs]

    def logged(job, log_file):
        result = {}

        def succeeded() -> int:  # run_logged takes an exit status: a cell that returns succeeded
            result["value"] = job()
            return 0

        run_logged(succeeded, log_file)
        return result["value"]

    results = runner.run_cells(specs, args.reference, list(outs), artifacts, list(logs), threads=args.threads,
                               show_progress=not args.no_progress, logged=logged)
    for result in results:
        print(_summary(result))
    return 0


def _summary(result: dict) -> str:
    """A job's result as the one line it prints: its id, status, and metrics (or why it diverged)."""
    keys = ("cell_id", "status", "metrics") if result["status"] == "ok" else ("cell_id", "status", "reason")
    return json.dumps({k: result.get(k) for k in keys})


def _validate(args: argparse.Namespace) -> int:
    """Validate a config and print the grid it plans (or its plan.json)."""
    from quantbench.config import load_config

    cfg = load_config(args.config)
    cfg.check_claims()
    if args.json:
        from quantbench.jobs.plan import plan_grid

        print(plan_grid(cfg).to_json(), end="")
    else:
        print(cfg.describe())
    return 0


def _fetch_weights(args: argparse.Namespace) -> int:
    """Download a grid's pretrained reference weights into the libraries' caches."""
    from quantbench.config import load_config
    from quantbench.models.pretrained import fetch

    cfg = load_config(args.config)
    sources = {}
    for task, arch in dict.fromkeys((task, arch) for task, arch, _ in cfg.references()):
        settings = cfg.train_settings(task, arch)
        if settings.pretrained:
            sources.setdefault((settings.pretrained, settings.pretrained_sha256), []).append(f"{task}/{arch}")
    for (source, sha256), pairs in sources.items():
        print(f"{source} ({', '.join(pairs)}): {fetch(source, sha256)}")
    if not sources:
        print(f"{args.config}: no reference of this grid is pretrained; nothing to fetch")
    return 0


def _methods(args: argparse.Namespace) -> int:
    """List the registered methods; a broken plugin is named and the others still listed (exit 2)."""
    from quantbench.methods import available_methods, get_method

    broken = []
    for name in available_methods():
        try:
            cls = get_method(name)
        except ConfigError as e:  # a broken plugin: the others are listed all the same
            broken.append(str(e))
            continue
        print(f"{name:24s} {cls.__module__}.{cls.__qualname__}")
    for reason in broken:
        print(f"quantbench methods: error: {reason}", file=sys.stderr)
    return 2 if broken else 0


def _plan(args: argparse.Namespace) -> int:
    """Record a grid's plan.json in its MLflow experiment."""
    from quantbench.jobs.plan import Plan
    from quantbench.tracking import experiment_store

    plan = Plan.load(args.plan)
    tracker, exp_id = experiment_store(plan.context)
    run_id, new = tracker.record_plan(exp_id, args.plan, plan.sha256())
    print(f"MLflow experiment {plan.context.experiment!r} (id {exp_id}) at {tracker.uri}: plan of "
          f"{len(plan.cells)} cells, "
          f"{len(plan.references)} references and {len(plan.skipped)} skipped cells "
          f"{'recorded as' if new else 'already recorded in'} run {run_id}")
    return 0


def _job(args: argparse.Namespace) -> int:
    """Run one reference or cell job (or a batch of cells)."""
    from quantbench import distributed
    from quantbench.jobs import runner
    from quantbench.jobs.plan import Plan

    if getattr(args, "batch", None) is not None:
        return _run_batch(args)
    spec = Plan.load(args.plan).spec(args.job, args.digest)
    if spec.identity.kind != args.command:
        raise ConfigError(f"--job {args.job} is a {spec.identity.kind} job; quantbench {args.command} runs a "
                          f"{args.command}")
    if getattr(args, "launch_argv", None) is not None:
        return _launch(args, spec)
    common = dict(out=args.out, log_file=args.log, threads=args.threads, show_progress=not args.no_progress)
    try:
        if args.command == "reference":
            result = runner.run_reference(spec, **common)
        else:
            result = runner.run_cell(spec, args.reference, artifact=args.artifact, **common)
    finally:
        distributed.shutdown()
    if "rank" not in result:  # rank 0 (or the only process)
        print(_summary(result))
    return 0


def _tables(args: argparse.Namespace) -> int:
    """Regenerate the tables, plots and claims of an experiment from MLflow."""
    from quantbench.config.claims import parse_claims
    from quantbench.jobs.plan import TABLES_DEFAULTS, Plan
    from quantbench.report.tables import tables_from_mlflow
    from quantbench.tracking import resolve_tracking_uri

    settings, results, uri, claims = dict(TABLES_DEFAULTS), Path("results"), args.tracking_uri, args.claims
    if args.plan is not None:
        plan = Plan.load(args.plan)
        settings, results = plan.tables, Path(plan.context.results_dir)
        args.experiment, uri = plan.context.experiment, uri or plan.context.tracking_uri
        claims = plan.tables["claims"] if claims is None else claims
    results = args.results_dir or results
    uri = resolve_tracking_uri(uri, results)
    out_dir = args.out_dir or results / "tables" / args.experiment
    size_tolerance = args.size_tolerance if args.size_tolerance is not None else settings["size_tolerance"]
    alpha = args.alpha if args.alpha is not None else settings["alpha"]
    for path in tables_from_mlflow(uri, args.experiment, out_dir, args.task, size_tolerance, alpha,
                                   None if claims is None else parse_claims(claims), settings.get("margins")):
        print(path)
    return 0


def _claims(args: argparse.Namespace) -> int:
    """Check a grid's claims against its record."""
    from quantbench.report.claims import claims_command

    cfg = _grid(args)
    cfg.check_claims()
    args.experiment = None
    uri, experiment, alpha = _record(args)
    print(claims_command(uri, experiment, alpha, cfg.claims, args.csv, cfg["tables"]["margins"]))
    return 0


def _compare(args: argparse.Namespace) -> int:
    """The paired difference of two cells, with margins and power on request."""
    from quantbench.report.significance import compare_command

    if args.power is not None and math.isnan(args.power):
        raise ConfigError("--power needs the difference to detect, in the metric's units "
                          "(e.g. --power 1.0 for one accuracy point)")
    print(compare_command(*_record(args), args.task, args.arch, args.budget, args.method_a, args.method_b,
                          args.margin, args.power))
    return 0


def _variance(args: argparse.Namespace) -> int:
    """Where a record's seed-to-seed variance comes from."""
    from quantbench.report.variance import variance_command

    if (cfg := _grid(args)) is not None:
        seeds = cfg.raw["seeds"]
        if len(seeds) < 2:
            raise ConfigError(f"{args.grid}: config.seeds is {seeds}: a variance decomposition needs 2 or more "
                              f"seeds")
    uri, experiment, _ = _record(args)
    print(variance_command(uri, experiment))
    return 0


def _docs_tables(args: argparse.Namespace) -> int:
    """Rewrite (or --check) the docs' tables from their CSVs."""
    from quantbench.report.doctables import stale, update

    docs = args.docs or [Path("README.md"), Path("docs/grids.md"), *sorted(Path("docs/methods").glob("*.md"))]
    if args.check:
        found = [line for doc in docs for line in stale(doc, Path("."))]
        print("\n".join(found) or "every table is its CSV's")
        return 1 if found else 0
    for doc in docs:
        if update(doc, Path(".")):
            print(f"rewrote {doc}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {  # one function per subcommand
    "validate": _validate,
    "fetch-weights": _fetch_weights,
    "methods": _methods,
    "plan": _plan,
    "reference": _job,
    "cell": _job,
    "tables": _tables,
    "claims": _claims,
    "compare": _compare,
    "variance": _variance,
    "docs-tables": _docs_tables,
}


if __name__ == "__main__":
    from quantbench.distributed import launched_by_torchrun

    if launched_by_torchrun():  # a rank: an uncaught error goes to torchrun's error file (its launcher's reason)
        from torch.distributed.elastic.multiprocessing.errors import record

        sys.exit(record(main)())
    sys.exit(main())
