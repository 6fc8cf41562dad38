"""Claims (config ``claims``): parsed and refused as the grid says, checked by the paired test on
hand-made records: one that holds, one that fails on purpose, one that is inconclusive."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.records import SPLIT, Record, correctness

from quantbench.cli import main
from quantbench.config import load_config
from quantbench.errors import ConfigError
from quantbench.report.claims import FAILS, HOLDS, INCONCLUSIVE, NOT_RUN, evaluate_claims, parse_claims
from quantbench.report.significance import CellRecord
from quantbench.report.tables import tables_from_mlflow


def lose(right: np.ndarray, lost: int, gained: int = 0) -> np.ndarray:
    """``right`` with its first ``lost`` hits missed and its first ``gained`` misses hit."""
    out = right.copy()
    out[np.flatnonzero(right)[:lost]] = 0
    out[np.flatnonzero(right == 0)[:gained]] = 1
    return out


@pytest.fixture
def record(tmp_path):
    """lenet-like arch mlp at 2 bits: lc far above dc (holds), gpfq far below msq (fails), opq
    and uniform one example apart, 3 lost and 2 gained (inconclusive); rtn at 1 bit has no finished run."""
    rec = Record(tmp_path, name="claims")
    base = correctness(0.9, 0)
    rec.run(None, None, 0, correctness(0.97, 1))
    rec.run("dc", 2, 0, lose(base, 60))
    rec.run("lc_adaptive", 2, 0, base)
    rec.run("msq", 2, 0, base)
    rec.run("gpfq", 2, 0, lose(base, 50))
    rec.run("opq", 2, 0, base)
    rec.run("prune_quant_uniform", 2, 0, lose(base, 3, gained=2))
    rec.run("lc_adaptive", 1, 0, base)
    return rec


GRID_CLAIMS = [{"claim": "lc_adaptive > dc", "at": [2], "source": "LC paper"},
               {"claim": "gpfq > msq"},
               {"claim": "opq > prune_quant_uniform", "at": [2]},
               {"claim": "lc_adaptive > dc", "at": [1]},
               {"claim": "opq >= prune_quant_uniform"},
               {"claim": "opq >= prune_quant_uniform", "margin": 2.0}]


def verdicts(record) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = record.tmp / "tables"
    tables_from_mlflow(record.uri, record.name, out, claims=parse_claims(GRID_CLAIMS))
    return pd.read_csv(out / "digits_claims.csv"), (out / "digits_claims.md").read_text()


def test_a_claim_holds_fails_or_is_inconclusive_by_the_paired_test(record):
    cases, md = verdicts(record)
    by_claim = {c: g for c, g in cases.groupby("claim", sort=False)}
    assert list(by_claim["lc_adaptive > dc"]["verdict"]) == [HOLDS, NOT_RUN]  # at 1 bit dc has no run
    assert list(by_claim["gpfq > msq"]["verdict"]) == [FAILS]
    opq = cases[cases["claim"] == "opq > prune_quant_uniform"].iloc[0]
    assert opq["verdict"] == INCONCLUSIVE and opq["low"] <= 0 < opq["high"] and opq["p"] > 0.05
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "| holds" not in lines["gpfq > msq"] and "fails" in lines["gpfq > msq"]
    assert "inconclusive" in lines["opq > prune_quant_uniform"]
    assert "LC paper" in md
    # A >= B is non-inferiority: one example apart on one seed, the interval reaches below the
    # default 0.5-point margin (inconclusive); above a 2-point margin it holds
    ge = cases[cases["claim"] == "opq >= prune_quant_uniform"].set_index("margin")
    assert ge.loc[0.5, "verdict"] == INCONCLUSIVE and -2.0 < ge.loc[0.5, "low"] < -0.5
    assert ge.loc[2.0, "verdict"] == HOLDS
    # one seed: the seeds' spread is unknown, so no seeds-needed figure
    assert ge[["detectable", "seeds_needed"]].isna().all().all()


def test_a_comparison_reports_either_side_or_no_difference(record):
    """'A vs B' assumes no direction: the side that is significantly better (either way), or none."""
    out = record.tmp / "tables"
    claims = parse_claims([{"claim": "dc vs lc_adaptive", "at": [2]}, {"claim": "lc_adaptive vs dc", "at": [2]},
                           {"claim": "opq vs prune_quant_uniform"}])
    tables_from_mlflow(record.uri, record.name, out, claims=claims)
    cases = pd.read_csv(out / "digits_claims.csv")
    assert list(cases["verdict"]) == ["lc_adaptive better", "lc_adaptive better", "no detectable difference"]
    md = (out / "digits_claims.md").read_text()
    assert "reported: dc better 0, lc_adaptive better 1, no detectable difference 0" in md
    assert "reported: opq better 0, prune_quant_uniform better 0, no detectable difference 1" in md


def test_a_claim_at_a_budget_without_runs_of_one_side_is_not_run(record):
    cases, md = verdicts(record)
    one_bit = cases[(cases["claim"] == "lc_adaptive > dc") & (cases["budget"] == 1)].iloc[0]
    assert one_bit["verdict"] == NOT_RUN and "dc has no finished run" in one_bit["reason"]
    assert "| lc_adaptive > dc" in md


def test_claims_print_from_the_grid_and_refuse_what_the_grid_does_not_have(record, tmp_path, capsys):
    grid = {"name": "claims", "tasks": ["digits"], "archs": ["lenet300"], "budgets": [1, 2],
            "methods": ["dc", "lc_adaptive", "msq", "gpfq", "opq", "prune_quant_uniform"],
            "tracking_uri": record.uri, "claims": GRID_CLAIMS}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert main(["claims", "--grid", str(path), "--csv", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "| gpfq > msq" in out and "fails" in out and (tmp_path / "c.csv").is_file()
    for bad, message in (({"claim": "lc_adaptive > dc", "at": [3]}, "budget 3 is not in this grid's budgets"),
                         ({"claim": "lc_adaptive > rtn"}, "method 'rtn' is not in this grid's methods"),
                         ({"claim": "lc_adaptive > dc", "archs": ["vgg16"]}, "arch 'vgg16' is not in")):
        path.write_text(yaml.safe_dump({**grid, "claims": [bad]}))
        assert main(["claims", "--grid", str(path)]) == 2
        err = capsys.readouterr().err
        assert "config.claims[0]" in err and bad["claim"] in err and message in err


@pytest.mark.parametrize("claim, message", [
    ({"claim": "lc_adaptive >> dc"}, "expected 'A > B', 'A >= B', 'A vs B'"),
    ({"claim": "lc_adaptive vsdc"}, "expected 'A > B', 'A >= B', 'A vs B'"),
    ({"claim": "lc_adaptve > dc"}, "unknown method 'lc_adaptve'"),
    ({"claim": "dc > dc"}, "compares dc with itself"),
    ({"claim": "lc_adaptive > dc", "margin": 1}, "a margin belongs to '>='"),
    ({"claim": "starting point", "margin": 1}, "takes no margin"),
    ({"claim": "lc_adaptive > dc", "at": ["two"]}, r"config.claims\[0\].at\[0\]: 'two' is not of type 'number'"),
])
def test_planning_refuses_a_malformed_claim_with_its_text(claim, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"name": "x", "claims": [claim]})


def test_a_narrowed_grid_keeps_its_claims_at_planning():
    """``--config methods=[rtn]`` on a grid whose claims name other methods: planned all the same
    (their cases are simply not run); ``quantbench validate`` of the grid as written checks them."""
    cfg = load_config({"name": "x", "methods": ["rtn"], "claims": [{"claim": "lc_adaptive > dc", "at": [2]}]})
    assert [c.text for c in cfg.claims] == ["lc_adaptive > dc"]
    with pytest.raises(ConfigError, match="method 'lc_adaptive' is not in this grid's methods"):
        cfg.check_claims()


def test_a_claim_over_cells_evaluated_on_different_examples_is_refused(tmp_path, capsys):
    rec = Record(tmp_path, name="split")
    rec.run("lc_adaptive", 2, 0, correctness(0.9, 0))
    rec.run("dc", 2, 0, correctness(0.8, 1), split={**SPLIT, "order_sha256": "ef" * 32})
    rec.run("lc_adaptive", 4, 0, correctness(0.9, 0), bpw=4.0)
    rec.run("dc", 4, 0, correctness(0.8, 1), bpw=4.0, examples=False)  # recorded before examples.npz existed
    claims = [{"claim": "lc_adaptive > dc"}]
    tables_from_mlflow(rec.uri, "split", tmp_path / "t", claims=parse_claims(claims))  # the tables still come
    cases = pd.read_csv(tmp_path / "t" / "digits_claims.csv").set_index("budget")
    assert cases.loc[2.0, "verdict"] == cases.loc[4.0, "verdict"] == "refused"
    assert "not evaluated on the same examples" in cases.loc[2.0, "reason"]
    assert "no per-example results recorded for digits/mlp dc at 4 bits" in cases.loc[4.0, "reason"]
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "split", "methods": ["lc_adaptive", "dc"], "budgets": [2, 4],
                                    "tracking_uri": rec.uri, "claims": claims}))
    assert main(["claims", "--grid", str(grid)]) == 2
    err = capsys.readouterr().err
    assert "claim 'lc_adaptive > dc' refused" in err and "not evaluated on the same examples" in err


def test_the_shipped_grids_state_claims_that_name_their_own_cells():
    from pathlib import Path

    grids = sorted((Path(__file__).resolve().parents[1] / "workflows" / "config").glob("*.yaml"))
    stated = {}
    for grid in grids:
        cfg = load_config(grid)
        cfg.check_claims()
        stated[grid.stem] = [c.text for c in cfg.claims]
    for name in ("default", "lm", "diffq_vs_qat", "paper_lc", "paper_gpfq", "paper_opq", "paper_diffq"):
        assert stated[name], f"{name}.yaml states no claims"


def test_the_starting_point_rule_covers_the_methods_whose_start_is_in_the_grid(tmp_path):
    rec = Record(tmp_path, name="start")
    base = correctness(0.9, 0)
    rec.run("dc", 2, 0, base)
    rec.run("lc_adaptive", 2, 0, lose(base, 40), starts_from="dc")  # far below its starting point
    rec.run("gpfq", 2, 0, base, starts_from="msq")  # msq is not in this record: no case
    out = tmp_path / "t"
    tables_from_mlflow(rec.uri, "start", out, claims=parse_claims([{"claim": "starting point"}]))
    cases = pd.read_csv(out / "digits_claims.csv")
    assert list(zip(cases["A"], cases["B"], cases["verdict"], strict=True)) == [("lc_adaptive", "dc", FAILS)]


def _cell(method: str, values: dict[int, float], diverged: set[int]) -> CellRecord:
    return CellRecord("digits", "mlp", method, 2.0, "accuracy", True, values=values, diverged=diverged)


@pytest.mark.parametrize(("claim", "a", "b", "verdict", "reason"), [
    # A lost a seed B finished: a claim that A is better, or not worse, fails whatever the other seeds say
    ("a > b", _cell("a", {0: 99.0}, {1}), _cell("b", {0: 10.0, 1: 10.0}, set()), FAILS,
     "a diverged at seed(s) 1 where b finished"),
    ("a >= b", _cell("a", {}, {0, 1}), _cell("b", {0: 10.0, 1: 10.0}, set()), FAILS,
     "a diverged at seed(s) 0, 1 where b finished"),
    # B lost every seed A finished: nothing left to test, and every seed is A's
    ("a > b", _cell("a", {0: 50.0}, set()), _cell("b", {}, {0}), HOLDS, "b diverged at seed(s) 0 where a finished"),
    ("a vs b", _cell("a", {}, {0}), _cell("b", {0: 10.0}, set()), "b better",
     "a diverged at seed(s) 0 where b finished"),
    ("a vs b", _cell("a", {0: 10.0}, set()), _cell("b", {}, {0}), "a better",
     "b diverged at seed(s) 0 where a finished"),
    # both diverged at every seed: no seed to call either way
    ("a > b", _cell("a", {}, {0}), _cell("b", {}, {0}), NOT_RUN, "diverged at every seed"),
    ("a vs b", _cell("a", {}, {0}), _cell("b", {}, {0}), NOT_RUN, "diverged at every seed"),
])
def test_a_diverged_seed_is_worse_than_any_result(claim, a, b, verdict, reason):
    (parsed,) = parse_claims([{"claim": claim}])
    present = {("digits", "mlp", m, 2.0) for m in ("a", "b")}
    cases, verdicts = evaluate_claims([parsed], {("digits", "mlp", "a", 2.0): a, ("digits", "mlp", "b", 2.0): b},
                                      present)
    assert cases[["verdict", "reason"]].values.tolist() == [[verdict, reason]]


def test_non_inferiority_and_the_seeds_needed_over_three_seeds_as_scipy_computes_them(tmp_path):
    """Three seeds, A a little above B with spread: 'A > B' is inconclusive and says the seeds
    needed (the power of scipy's noncentral t, checked minimal); 'A >= B' holds where the t
    interval's lower end (scipy's) is above −margin, and is inconclusive with a margin below it."""
    from scipy.stats import ttest_rel

    from quantbench.report.stats import seeds_needed, t_power

    rec = Record(tmp_path, name="ni")
    a_acc, b_acc = [0.92, 0.90, 0.93], [0.91, 0.90, 0.915]
    for seed, (a, b) in enumerate(zip(a_acc, b_acc, strict=True)):
        rec.run("opq", 2, seed, correctness(a, seed))
        rec.run("prune_quant_uniform", 2, seed, correctness(b, seed))
    pa = [100 * correctness(a, s).mean() for s, a in enumerate(a_acc)]
    pb = [100 * correctness(b, s).mean() for s, b in enumerate(b_acc)]
    low = ttest_rel(pa, pb).confidence_interval(0.95).low
    d = np.subtract(pa, pb)
    claims = [{"claim": "opq > prune_quant_uniform"}, {"claim": "opq >= prune_quant_uniform", "margin": -low + 0.1},
              {"claim": "opq >= prune_quant_uniform", "margin": -low - 0.1}]
    out = tmp_path / "tables"
    tables_from_mlflow(rec.uri, "ni", out, claims=parse_claims(claims))
    cases = pd.read_csv(out / "digits_claims.csv")
    better, wide, narrow = (cases.iloc[i] for i in range(3))
    assert better["verdict"] == INCONCLUSIVE and better["low"] == pytest.approx(low, rel=1e-9)
    needed = seeds_needed(d.mean(), d.std(ddof=1))
    assert better["seeds_needed"] == needed and t_power(d.mean(), d.std(ddof=1), needed - 1) < 0.8
    assert t_power(better["detectable"], d.std(ddof=1), 3) == pytest.approx(0.8, abs=1e-6)
    assert (wide["verdict"], narrow["verdict"]) == (HOLDS, INCONCLUSIVE)
    assert narrow["seeds_needed"] == seeds_needed(d.mean() + narrow["margin"], d.std(ddof=1))
