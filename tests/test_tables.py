"""Tables from the MLflow record: mean ± std over seeds, latest run per cell, failures marked."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest
from helpers.records import write_run

from quantbench.cli import main
from quantbench.report.summary import best_rows, summarize
from quantbench.report.tables import tables_from_mlflow, write_tables
from quantbench.tracking import Tracker


@pytest.fixture
def record(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.ensure_experiment("t", tmp_path / "artifacts")

    def run(kind, seed, acc, method=None, budget=None, status="ok", bpw=32.0, ratio=1.0):
        cell = f"digits/mlp/{method or 'reference'}/" + (f"b{budget}/" if budget else "") + f"s{seed}"
        tags = {"kind": kind, "cell_id": cell, "task": "digits", "arch": "mlp", "seed": str(seed),
                "metric": "accuracy", "status": status}
        if method:
            tags.update(method=method, budget=str(budget))
        metrics = {"accuracy": acc, "bpw": bpw, "compression_ratio": ratio} if status == "ok" else {}
        write_run(tracker, exp, cell, metrics, tags, status="FAILED" if status == "failed" else "FINISHED")

    run("reference", 0, 96.0)
    run("reference", 1, 98.0)
    run("cell", 0, 80.0, "rtn", 2, bpw=2.01, ratio=14.0)  # superseded by the rerun below
    run("cell", 0, 90.0, "rtn", 2, bpw=2.01, ratio=14.0)
    run("cell", 1, 92.0, "rtn", 2, bpw=2.01, ratio=14.0)
    run("cell", 0, 0.0, "rtn", 4, status="diverged")  # a result: the cell reads seed 1's mean, marked, never bold
    run("cell", 1, 95.5, "rtn", 4, bpw=4.0, ratio=8.0)
    run("cell", 0, 0.0, "rtn", 8, status="diverged")  # every seed diverged: "diverged"
    run("cell", 1, 0.0, "rtn", 8, status="diverged")
    run("cell", 0, 70.0, "other", 2, bpw=2.5, ratio=12.0)  # over budget
    run("cell", 0, 0.0, "other", 4, status="failed")  # no result: "failed"
    return uri, tmp_path / "tables"


def test_tables_aggregate_seeds_and_mark_failures(record):
    uri, out = record
    paths = tables_from_mlflow(uri, "t", out)
    assert sorted(p.name for p in paths) == ["digits.csv", "digits.md", "digits.tex", "digits_size.pdf",
                                             "digits_size.png", "digits_steps.pdf", "digits_steps.png"]
    md = (out / "digits.md").read_text()
    mean, std = statistics.mean([90.0, 92.0]), statistics.stdev([90.0, 92.0])
    ref_mean, ref_std = statistics.mean([96.0, 98.0]), statistics.stdev([96.0, 98.0])
    lines = {line.split("|")[3].strip(): line for line in md.splitlines() if line.startswith("| mlp")}
    # two seeds (recorded without per-example results): their range (the CSV keeps the std and each value)
    assert f"**{mean:.2f}** [90.00, 92.00] (2.01 bpw, 14.0×)" in lines["rtn"]  # the best at 2 bits: bold
    cells = {method: [c.strip() for c in line.split("|")[4:-1]] for method, line in lines.items()}
    assert cells["rtn"][1:] == ["95.50§ (4.00 bpw, 8.0×)", "diverged"]  # the 4-bit column's best mean, not bold
    assert cells["other"][1] == "failed"
    assert "§ diverged (a result: the mean is over the other seeds, never bold): mlp rtn at seed 0 of 2 in the " \
           "4-bit column" in md.splitlines()
    assert f"{ref_mean:.2f} [96.00, 98.00] (32.00 bpw, 1.0×)" in lines["reference"]
    assert "| 70.00 (2.50 bpw†, 12.0×)" in lines["other"] and "—" in lines["other"]
    assert list(lines) == ["reference", "other", "rtn"]
    csv = pd.read_csv(out / "digits.csv")
    row = csv[(csv.method == "rtn") & (csv.budget == 4)].iloc[0]
    assert (row["seeds"], row["ok"], row["diverged"], row["n_seeds"], row["best"]) == (2, 1, 1, 1, False)
    assert csv[(csv.method == "rtn") & (csv.budget == 8)].iloc[0][["status", "seeds", "diverged"]].tolist() == [
        "diverged", 2, 2]
    row = csv[(csv.method == "rtn") & (csv.budget == 2)].iloc[0]
    assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std) and row["seeds"] == 2
    assert row["n_seeds"] == 2 and (row["ci_low"], row["ci_high"]) == (90.0, 92.0) and bool(row["best"])
    assert csv[csv.method == "reference"].iloc[0]["std"] == pytest.approx(ref_std)
    tex = (out / "digits.tex").read_text()
    assert r"\toprule" in tex and r"\textbf{91.00} [90.00, 92.00]" in tex and "±" not in tex


def test_unknown_experiment_is_a_clear_error(record):
    uri, out = record
    with pytest.raises(LookupError, match="no MLflow experiment 'missing'"):
        tables_from_mlflow(uri, "missing", out)


def test_published_figures_get_a_paper_column(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.ensure_experiment("p", tmp_path / "artifacts")
    base = {"task": "mnist", "arch": "lenet300", "seed": "0", "metric": "accuracy", "status": "ok"}
    write_run(tracker, exp, "r", {"accuracy": 98.0, "bpw": 32.0, "compression_ratio": 1.0},
              {**base, "kind": "reference", "cell_id": "mnist/lenet300/reference/s0", "paper_value": "97.87"})
    for budget, acc, paper in ((1, 97.0, "97.44"), (2, 97.5, None)):
        tags = {**base, "kind": "cell", "cell_id": f"mnist/lenet300/lc/b{budget}/s0", "method": "lc",
                "budget": str(budget)}
        if paper:
            tags["paper_value"] = paper
        write_run(tracker, exp, "c", {"accuracy": acc, "bpw": float(budget), "compression_ratio": 32.0 / budget}, tags)
    tables_from_mlflow(uri, "p", tmp_path / "tables")
    md = (tmp_path / "tables" / "mnist.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| arch"))
    assert [c.strip() for c in header.split("|")[1:-1]] == ["arch", "family", "method", "1-bit", "1-bit paper",
                                                             "2-bit", "2-bit paper"]
    rows = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[4:-1]]
            for line in md.splitlines() if line.startswith("| lenet300")}
    assert rows["reference"][1] == rows["reference"][3] == "97.87"
    assert rows["lc"][1] == "97.44" and rows["lc"][3] == "—"
    assert "'paper': the published figure" in md


def _record_plan(tracker, exp, cfg, tmp_path, rename: dict | None = None) -> None:
    """Record ``cfg``'s plan in the experiment, as the Snakefile does when a grid starts, with its
    method labels renamed by ``rename`` (a label no code of this process registers)."""
    import dataclasses

    from quantbench.jobs.plan import plan_grid

    plan, rename = plan_grid(cfg), rename or {}

    def label(job_id: str) -> str:
        parts = job_id.split("/")
        parts[2] = rename.get(parts[2], parts[2])
        return "/".join(parts)

    plan = dataclasses.replace(
        plan, methods={rename.get(k, k): v for k, v in plan.methods.items()},
        cells={label(k): {**c, "method": rename.get(c["method"], c["method"])} for k, c in plan.cells.items()},
        skipped={label(k): why for k, why in plan.skipped.items()})
    path = plan.write(tmp_path / "plan.json")
    tracker.record_plan(exp, path, plan.sha256())


def test_a_planned_cell_without_a_run_reads_apart_from_an_unserved_budget(tmp_path):
    """rtn serves 1, 1.58, 2 and 4 bits but only its 2-bit cell has a run: "not run"; lc_ternary serves
    only log2(3) bits: "—"; dc all but 1.58 bits. What was planned and skipped is read from the plan
    the record holds; a label with no run at all still gets its row."""
    from quantbench.config import load_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.ensure_experiment("m", tmp_path / "artifacts")
    cfg = load_config({"name": "m", "methods": ["rtn", "lc_ternary", "dc", "qat"], "archs": ["lenet300"],
                       "budgets": [1, 1.58, 2, 4], "seeds": [0]})
    _record_plan(tracker, exp, cfg, tmp_path)
    base = {"task": "digits", "arch": "lenet300", "seed": "0", "metric": "accuracy", "status": "ok", "kind": "cell",
            "version.torch": "9.9.9"}
    for method, budget in [("rtn", 2), ("lc_ternary", 1.58), ("dc", 1), ("dc", 4)]:
        tags = {**base, "cell_id": f"digits/lenet300/{method}/b{budget}/s0", "method": method, "budget": str(budget)}
        write_run(tracker, exp, "c", {"accuracy": 90.0, "bpw": float(budget), "compression_ratio": 10.0}, tags)
    tables_from_mlflow(uri, "m", tmp_path / "tables")
    md = (tmp_path / "tables" / "digits.md").read_text()
    rows = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[4:-1]]
            for line in md.splitlines() if line.startswith("| lenet300")}
    # columns: 1, 1.58, 2, 4 bits
    assert rows["rtn"][0] == rows["rtn"][1] == rows["rtn"][3] == "not run"
    assert rows["lc_ternary"][0] == rows["lc_ternary"][2] == rows["lc_ternary"][3] == "—"
    assert rows["dc"][2] == "not run" and rows["dc"][1] == "—"
    assert rows["qat"] == ["not run", "—", "not run", "not run"]  # planned, never run; qat skips 1.58 bits
    assert "not run: planned cell without a run" in md and "torch 9.9.9" in md
    csv = pd.read_csv(tmp_path / "tables" / "digits.csv")
    qat = csv[csv.method == "qat"]  # its family, the table group it declares, is the plan's
    assert set(qat["status"]) == {"not run"} and set(qat["family"]) == {"DiffQ"}


def test_the_rows_of_a_method_not_installed_read_from_its_plan(tmp_path):
    """A record whose plan names a plugin's label that no installed code registers ("ghost", dc's
    plan entry renamed): its planned cells without a run read "not run", its skipped budget "—",
    its family is the plan's, and its declared step curve reaches the steps plot's data."""
    from quantbench.config import load_config
    from quantbench.methods import available_methods
    from quantbench.report.tables import recorded_plans, step_histories

    assert "ghost" not in available_methods()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.ensure_experiment("g", tmp_path / "artifacts")
    cfg = load_config({"name": "g", "methods": ["rtn", "lc_adaptive"], "archs": ["lenet300"],
                       "budgets": [1, 1.58, 2], "seeds": [0]})
    _record_plan(tracker, exp, cfg, tmp_path, rename={"lc_adaptive": "ghost"})
    base = {"task": "digits", "arch": "lenet300", "seed": "0", "metric": "accuracy", "status": "ok"}
    write_run(tracker, exp, "r", {"accuracy": 97.0, "bpw": 32.0, "compression_ratio": 1.0},
              {**base, "kind": "reference", "cell_id": "digits/lenet300/reference/s0"})
    run_id = write_run(tracker, exp, "c", {"accuracy": 95.0, "bpw": 1.0, "compression_ratio": 32.0},
                       {**base, "kind": "cell", "cell_id": "digits/lenet300/ghost/b1/s0", "method": "ghost",
                        "budget": "1", "family": "LC"})
    for step, value in enumerate([90.0, 93.0, 95.0]):
        tracker.client.log_metric(run_id, "lc/accuracy", value, step=step)
    write_run(tracker, exp, "c", {"accuracy": 60.0, "bpw": 1.58, "compression_ratio": 20.0},  # the 1.58 column
              {**base, "kind": "cell", "cell_id": "digits/lenet300/rtn/b1.58/s0", "method": "rtn", "budget": "1.58"})
    tables_from_mlflow(uri, "g", tmp_path / "tables")
    md = (tmp_path / "tables" / "digits.md").read_text()
    rows = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in md.splitlines() if line.startswith("| lenet300")}
    assert rows["ghost"][0] == "LC" and rows["ghost"][2].startswith("**95.00**")
    assert rows["ghost"][3:] == ["—", "not run"]  # columns 1, 1.58, 2 bits
    planned = recorded_plans(tracker, "g")
    assert [c.key for c in planned.step_curves("ghost")] == ["lc/{metric}"]
    curve = step_histories(tracker, tracker.runs("g"), planned)
    assert list(curve[curve["key"] == "lc/accuracy"]["value"]) == [90.0, 93.0, 95.0]


def record_cells(tmp_path, cells, metric="accuracy", higher=True, name="e"):
    """A record of one (task, arch) with a reference and ``cells``: (method, budget, value, bpw,
    starts_from or None[, status]), one seed each, tagged as the runner tags them."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.ensure_experiment(name, tmp_path / "artifacts")
    base = {"task": "digits", "arch": "mlp", "seed": "0", "metric": metric, "higher_is_better": str(higher).lower()}
    write_run(tracker, exp, "r", {metric: 50.0, "bpw": 32.0, "compression_ratio": 1.0},
              {**base, "kind": "reference", "cell_id": "digits/mlp/reference/s0", "status": "ok"})
    for method, budget, value, bpw, start, *status in cells:
        status = status[0] if status else "ok"
        tags = {**base, "kind": "cell", "cell_id": f"digits/mlp/{method}/b{budget:g}/s0", "method": method,
                "budget": f"{budget:g}", "status": status}
        if start:
            tags["starts_from"] = start
        metrics = {metric: value, "bpw": bpw, "compression_ratio": 32.0 / bpw} if status == "ok" else {}
        write_run(tracker, exp, method, metrics, tags, status="FINISHED" if status == "ok" else "FAILED")
    return tracker.runs(name)


def table_rows(md: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = md.splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("| arch")).split("|")[1:-1]]
    rows = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in lines if line.startswith("| mlp")}
    return header, rows


# (method, budget, accuracy, bpw, starts_from): at 2 bits diffq_fixed has the best mean but 2.18
# bpw and qat 2.08 bpw (over 2 * 1.01); lc_adaptive at 2.01 bpw is within the tolerance and rtn
# below the budget; idc ends below dc, its starting point, gpfq's starting point has no cell. At 4
# bits the best is below the budget; at 1 bit dc and idc tie (idc at 1.005 bpw), diffq_fixed over.
CELLS = [("dc", 2, 90.0, 2.0, None), ("lc_adaptive", 2, 92.0, 2.01, "dc"), ("diffq_fixed", 2, 95.0, 2.18, "rtn"),
         ("qat", 2, 93.0, 2.08, "rtn"), ("rtn", 2, 80.0, 1.9, None), ("idc", 2, 85.0, 2.0, "dc"),
         ("gpfq", 2, 60.0, 2.0, "msq"),
         ("rtn", 4, 96.0, 3.5, None), ("dc", 4, 95.0, 4.0, None),
         ("dc", 1, 80.0, 1.0, None), ("idc", 1, 80.0, 1.005, "dc"), ("diffq_fixed", 1, 80.0, 1.2, "rtn")]


def expected_marks(cells, tolerance, higher=True):
    """What the rules say, computed here from the cells themselves: the bold set per budget, the
    over-budget cells and the cells below their starting point."""
    done = {(m, b): (v, bpw, s) for m, b, v, bpw, s, *st in cells if not st or st[0] == "ok"}
    bold, over, below = set(), set(), set()
    for b in {b for _, b in done}:
        eligible = {m: v for (m, bb), (v, bpw, _) in done.items() if bb == b and bpw <= b * (1 + tolerance)}
        target = (max if higher else min)(eligible.values())
        bold |= {(m, b) for m, v in eligible.items() if v == target}
    for (m, b), (v, bpw, s) in done.items():
        if bpw > b * (1 + tolerance):
            over.add((m, b))
        if s and (s, b) in done and ((v < done[s, b][0]) if higher else (v > done[s, b][0])):
            below.add((m, b))
    return bold, over, below


@pytest.mark.parametrize("tolerance", [0.01, 0.1])
def test_only_cells_at_their_budget_compete_and_over_budget_cells_are_marked(tmp_path, tolerance):
    runs = record_cells(tmp_path, CELLS)
    write_tables(runs, tmp_path / "tables", size_tolerance=tolerance)
    md = (tmp_path / "tables" / "digits.md").read_text()
    header, rows = table_rows(md)
    bold, over, below = expected_marks(CELLS, tolerance)
    for method, budget, value, bpw, _ in CELLS:
        text = rows[method][header.index(f"{budget:g}-bit")]
        number = f"**{value:.2f}**" if (method, budget) in bold else f"{value:.2f}"
        assert text.startswith(number + ("‡" if (method, budget) in below else "") + " ("), (method, budget, text)
        assert f"{bpw:.2f} bpw{'†' if (method, budget) in over else ''}, " in text, (method, budget, text)
    if tolerance == 0.01:  # the rules at work, spelt out
        assert ("diffq_fixed", 2) in over and ("qat", 2) in over and ("diffq_fixed", 2) not in bold
        assert bold == {("lc_adaptive", 2), ("rtn", 4), ("dc", 1), ("idc", 1)}
        assert below == {("idc", 2)}  # gpfq: msq has no cell; idc at 1 bit ties dc: not worse
    else:  # at 10 %, 2.18 bpw is at 2 bits: diffq_fixed's best mean takes the bold
        assert bold == {("diffq_fixed", 2), ("rtn", 4), ("dc", 1), ("idc", 1)} and over == {("diffq_fixed", 1)}
    notes = {line[0]: set(line.split(": ", 1)[1].split("; ")) for line in md.splitlines()
             if line.startswith(("†", "‡"))}
    assert notes.pop("†", set()) == {f"mlp {m} {bpw:.2f} bpw in the {b:g}-bit column"
                                     for m, b, _, bpw, _ in CELLS if (m, b) in over}
    assert notes == {"‡": {"mlp idc 85.00 vs dc 90.00 in the 2-bit column"}}
    assert "† over budget: " in md and "‡ worse than its starting point: " in md
    assert f"at most {tolerance * 100:g} % above the budget" in md and "†: over budget" in md and "‡: worse" in md
    csv = pd.read_csv(tmp_path / "tables" / "digits.csv", keep_default_na=False)
    for method, budget, _, _, start in CELLS:
        row = csv[(csv.method == method) & (csv.budget.astype(str) == str(float(budget)))].iloc[0]
        assert row["starts_from"] == (start or "")
        assert bool(row["over_budget"]) == ((method, budget) in over)
        assert bool(row["below_start"]) == ((method, budget) in below)
    tex = (tmp_path / "tables" / "digits.tex").read_text()
    assert r"85.00$^\ddagger$" in tex and r"vs dc 90.00 in the 2-bit column" in tex
    assert "‡" not in tex and "†" not in tex
    for method, budget, _, bpw, _ in CELLS:
        marked = rf"{bpw:.2f} bpw$^\dagger$"
        note = f"mlp {method.replace('_', chr(92) + '_')} {bpw:.2f} bpw in the {budget:g}-bit column"
        assert (marked in tex and note in tex) if (method, budget) in over else (note not in tex)
    assert r"\%" in tex and " % " not in tex.replace(r"\%", "")  # a bare % would comment out the caption's end


def test_starting_point_on_a_lower_is_better_metric(tmp_path):
    """Perplexity: lc_adaptive above dc is worse (marked), idc below it is better; a starting cell
    that failed, or is absent, marks nothing; the bold goes to the lowest eligible mean."""
    cells = [("dc", 2, 13.51, 2.0, None), ("lc_adaptive", 2, 13.94, 2.0, "dc"), ("idc", 2, 13.2, 2.0, "dc"),
             ("diffq_fixed", 2, 12.0, 2.5, "rtn"),
             ("dc", 4, 0.0, 4.0, None, "failed"), ("lc_adaptive", 4, 20.0, 4.0, "dc"),
             ("lc_adaptive", 8, 30.0, 8.0, "dc")]
    runs = record_cells(tmp_path, cells, metric="perplexity", higher=False)
    write_tables(runs, tmp_path / "tables")
    md = (tmp_path / "tables" / "digits.md").read_text()
    header, rows = table_rows(md)
    bold, over, below = expected_marks(cells, 0.01, higher=False)
    assert below == {("lc_adaptive", 2)} and bold == {("idc", 2), ("lc_adaptive", 4), ("lc_adaptive", 8)}
    assert rows["lc_adaptive"][header.index("2-bit")].startswith("13.94‡ (")
    assert rows["idc"][header.index("2-bit")].startswith("**13.20** (")
    assert rows["diffq_fixed"][header.index("2-bit")].startswith("12.00 (2.50 bpw†")
    assert rows["lc_adaptive"][header.index("4-bit")].startswith("**20.00** (")  # dc failed: no mark
    assert rows["dc"][header.index("4-bit")] == "failed"
    assert "‡ worse than its starting point: mlp lc_adaptive 13.94 vs dc 13.51 in the 2-bit column" in md.splitlines()


def test_the_size_tolerance_decides_what_is_over_budget(record):
    uri, out = record
    tables_from_mlflow(uri, "t", out)
    md = (out / "digits.md").read_text()
    assert [line for line in md.splitlines() if line.startswith(("†", "‡"))] == [
        "† over budget: mlp other 2.50 bpw in the 2-bit column"]
    tables_from_mlflow(uri, "t", out, size_tolerance=0.5)
    md = (out / "digits.md").read_text()
    assert not [line for line in md.splitlines() if line.startswith(("†", "‡"))] and "†" not in md.split("|", 1)[1]
    assert "(2.50 bpw, 12.0×)" in md
    with pytest.raises(ValueError, match=r"size tolerance 0.6 is outside \(0, 0.5\]"):
        tables_from_mlflow(uri, "t", out, size_tolerance=0.6)


@pytest.mark.parametrize("value", ["0", "-0.1", "0.6", "nan", "abc"])
def test_the_cli_refuses_a_size_tolerance_outside_its_range(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tables", "--experiment", "x", "--size-tolerance", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --size-tolerance" in err
    assert ("is not a number" in err) if value == "abc" else ("outside (0, 0.5]" in err)


def test_the_cli_passes_its_size_tolerance(record, capsys):
    uri, out = record
    assert main(["tables", "--experiment", "t", "--tracking-uri", uri, "--out-dir", str(out),
                 "--size-tolerance", "0.3"]) == 0
    md = (out / "digits.md").read_text()  # 2.5 bpw is within 30 % of 2
    assert "(2.50 bpw, 12.0×)" in md and not [line for line in md.splitlines() if line.startswith("†")]
    assert "at most 30 % above the budget" in md


def test_the_ternary_column_pays_for_log2_3_bits(tmp_path):
    """The 1.58-bit budget is K = 3 levels, log2 3 = 1.585 bits: a cell at 1.60 bpw is within 1 % of
    what the column pays for (1.585 · 1.01 = 1.6008), one at 1.61 bpw is not; a budget that is no
    whole number of levels (2.5 bits) is taken as it is written."""
    runs = record_cells(tmp_path, [("lc_ternary", 1.58, 90.0, 1.60, None), ("rtn", 1.58, 95.0, 1.61, None),
                                   ("opq", 2.5, 90.0, 2.52, None), ("diffq", 2.5, 91.0, 2.53, None)])
    long = summarize(runs).set_index("method")
    assert math.log2(3) * 1.01 > 1.60 and math.log2(3) * 1.01 < 1.61 and 1.58 * 1.01 < 1.60
    assert not long.loc["lc_ternary", "over_budget"] and long.loc["rtn", "over_budget"]
    assert not long.loc["opq", "over_budget"] and long.loc["diffq", "over_budget"]  # 2.5 · 1.01 = 2.525
    best = best_rows(summarize(runs))
    assert {summarize(runs).loc[i, "method"] for i in best} == {"lc_ternary", "opq"}
