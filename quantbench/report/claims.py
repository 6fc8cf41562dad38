"""The papers' claims, stated once in a grid (config ``claims``) and checked against its record.

A claim compares two methods with the paired test of :mod:`quantbench.report.significance`, on every
(task, arch, budget) case it covers::

    claims:
      - claim: lc_adaptive > dc        # A > B: A significantly better
        at: [1, 2]                     # budgets (default: every budget both have a run at)
        archs: [lenet300]              # default: every arch; tasks: likewise
        source: "Carreira-Perpiñán & Idelbayev 2017, Fig. 5"
      - claim: diffq >= qat            # A >= B: A not worse than B by more than a margin
        margin: 0.5                    # default: the grid's tables.margins for the metric
      - claim: gpfq vs gptq            # A vs B: a comparison reported, not assumed (two-sided)
      - claim: starting point          # every method >= the method it starts from, where that is in the grid

With ``g`` = A − B signed so that positive is better (the task's metric) and its (1 − α)
interval ``[lo, hi]``, a case **holds** when ``A > B``: ``lo > 0``; ``A >= B``: ``lo > −m``
(non-inferiority: A is not worse than B by more than the margin m: the claim's ``margin``, else
the grid's ``tables.margins`` for the metric, default 0.5 points of accuracy or error, 1 % of B's
perplexity or loss; :func:`quantbench.report.stats.margin_in_units`). It **fails** when A is
significantly worse than B by more than m (m = 0 for ``>``): ``g < −m`` with the test of
``g = −m`` (twice its one-sided p) Holm-adjusted over the claim's cases below α. Otherwise it
is **inconclusive**, and says how far from deciding it is: ``detectable``, the smallest true
distance from its boundary (0, or −m) the paired t over the seeds run finds with 80 % power
given the seeds' spread (:func:`quantbench.report.stats.detectable_difference`), and ``seeds_needed``,
the seeds at which the observed distance ``g + m`` would be found so
(:func:`quantbench.report.stats.seeds_needed`; none where it is on the wrong side, or one seed leaves
the spread unknown; with no spread the sign-flip's 6 at α = 0.05). ``A vs B`` states no
direction: each case reports "A better" or "B better" (Holm-adjusted p below α, over the
claim's cases) or "no detectable difference" (with the same two figures for ``|g|``), and the
claim is **reported** with those counts. A diverged seed (a result without a metric) is worse
than any finished one: where A diverged and B finished, a claim that A is better (or not worse) **fails**
at that case, and ``A vs B`` reads "B better"; where B diverged and A finished, that seed counts
for A and the test runs on the seeds both finished (the reason names the seeds either way). A
case whose cells have no finished run is **not run**, one that cannot be
tested (cells evaluated on different examples, or recorded without per-example results) is
**refused** with the reason. A claim is refused when any case is (``quantbench claims`` exits
with the reasons; the tables rule writes them into the claims file), else holds when every case
holds (an intersection-union test: no correction needed), fails when any case fails, and is
inconclusive otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from quantbench.config.claims import STARTING_POINT, Claim, check_against_grid, parse_claims  # noqa: F401
from quantbench.errors import ExamplesError
from quantbench.files import write_text_atomic
from quantbench.report.significance import CellRecord, compare, present_cells, read_record
from quantbench.report.stats import (
    ALPHA,
    POWER,
    Difference,
    detectable_difference,
    format_p,
    grid_margin,
    holm,
    margin_in_units,
    seeds_needed,
)

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN, REFUSED = "holds", "fails", "inconclusive", "not run", "refused"
REPORTED, NO_DIFFERENCE = "reported", "no detectable difference"


def _cases(claim: Claim, records: dict[tuple, CellRecord], present: set[tuple]) -> list[tuple]:
    """``(task, arch, budget, A, B)`` of every case of ``claim``: where either method has a run
    (``present``: the record's (task, arch, method, budget) of any status), within its scope."""
    pairs = set()
    for task, arch, method, budget in present:
        if budget is None or (claim.tasks and task not in claim.tasks) or (claim.archs and arch not in claim.archs):
            continue
        if claim.budgets and not any(math.isclose(budget, b, abs_tol=1e-9) for b in claim.budgets):
            continue
        if claim.better == "*":  # where the starting method is in the grid (has a run of any status)
            start = records.get((task, arch, method, budget))
            if start is not None and start.starts_from and (task, arch, start.starts_from, budget) in present:
                pairs.add((task, arch, budget, method, start.starts_from))
        elif method in (claim.better, claim.than):
            pairs.add((task, arch, budget, claim.better, claim.than))
    return sorted(pairs)


def _lost_seeds(a: CellRecord, b: CellRecord) -> dict[str, list[int]]:
    """By method: the seeds where it diverged and the other finished (a loss for that side)."""
    return {a.method: sorted(a.diverged & set(b.values)), b.method: sorted(b.diverged & set(a.values))}


def _decided_by_divergence(claim: Claim, lost: dict[str, list[int]], a: CellRecord, b: CellRecord) -> str | None:
    """The case's verdict where divergences decide it (a diverged seed is worse than any finished
    one), else None (the paired test on the seeds both finished decides): A lost a seed: a claim
    that A is better or not worse fails (``vs``: B better, unless B lost one too); B lost one and
    A none: ``vs`` A better, and a claim for A holds when no seed is left to test."""
    a_lost, b_lost = lost[a.method], lost[b.method]
    common = set(a.values) & set(b.values)
    if claim.relation == "vs":
        if bool(a_lost) != bool(b_lost):
            return f"{b.method if a_lost else a.method} better"
        return None if common else NO_DIFFERENCE if a_lost else NOT_RUN
    if a_lost:
        return FAILS
    if not common:
        return HOLDS if b_lost else NOT_RUN
    return None


def _lost_reason(lost: dict[str, list[int]], a_name: str, b_name: str, tested: bool = False) -> str:
    said = [f"{name} diverged at seed(s) {', '.join(map(str, seeds))} where {other} finished"
            for name, other in ((a_name, b_name), (b_name, a_name)) if (seeds := lost[name])]
    return "; ".join(said) + ("; the test runs on the seeds both finished" if said and tested else "")


def _margin(claim: Claim, metric: str, comparator: float, margins: dict[str, float] | None) -> float:
    """The non-inferiority margin of an ``A >= B`` case in the metric's units: the claim's
    ``margin``, else the grid's for the metric (``tables.margins``, :data:`quantbench.report.stats.MARGINS`)."""
    margin = claim.margin if claim.margin is not None else grid_margin(metric, margins)
    return margin_in_units(metric, margin, comparator)


def _seeds_for(d: Difference, effect: float, alpha: float) -> dict:
    """``detectable`` (the smallest true distance from the case's boundary the seeds run find at
    80 % power, :func:`quantbench.report.stats.detectable_difference`) and ``seeds_needed`` (the seeds at
    which the observed distance ``effect`` would be found so: NaN where it is not on the claim's
    side, or one seed leaves the seeds' spread unknown)."""
    if d.n_seeds < 2:
        return {}
    needed = seeds_needed(effect, d.sd, alpha) if effect > 0 else None
    return {"detectable": detectable_difference(d.sd, d.n_seeds, alpha),
            "seeds_needed": math.nan if needed is None else needed}


def evaluate_claims(claims: list[Claim], records: dict[tuple, CellRecord], present: set[tuple],
                    alpha: float = ALPHA, margins: dict[str, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(cases, verdicts)``: one row per case of each claim (the difference A − B, its
    (1 − α) interval, p-value, Holm-adjusted p, margin, seeds, examples, for an inconclusive case
    the detectable difference and the seeds needed, verdict), and one row per claim (its verdict
    and how many cases held, failed, were inconclusive or not run). ``margins``: the grid's
    non-inferiority margin per metric (``tables.margins``) for ``A >= B`` claims without their own."""
    case_rows, claim_rows = [], []
    for claim in claims:
        rows, tested = [], []  # tested: (row, the test, A, B) of each case the paired test decides
        for task, arch, budget, a_name, b_name in _cases(claim, records, present):
            a, b = records.get((task, arch, a_name, budget)), records.get((task, arch, b_name, budget))
            row = {"claim": claim.text, "task": task, "arch": arch, "budget": budget, "A": a_name, "B": b_name,
                   "A_mean": a.mean if a else math.nan, "B_mean": b.mean if b else math.nan,
                   "difference": math.nan, "low": math.nan, "high": math.nan, "p": math.nan, "n_seeds": 0,
                   "n_examples": 0, "margin": math.nan, "detectable": math.nan, "seeds_needed": math.nan,
                   "verdict": "", "reason": ""}
            lost = None if a is None or b is None else _lost_seeds(a, b)
            decided = None if lost is None else _decided_by_divergence(claim, lost, a, b)
            if lost is None:
                row.update(verdict=NOT_RUN, reason=f"{a_name if a is None else b_name} has no finished run")
            elif decided is not None:
                row.update(verdict=decided, reason=_lost_reason(lost, a_name, b_name) or "diverged at every seed")
            else:
                row["reason"] = _lost_reason(lost, a_name, b_name, tested=True)
                try:
                    d = compare(a, b, confidence=1 - alpha)
                except ExamplesError as e:  # no per-example results, or different examples: no test
                    row.update(verdict=REFUSED, reason=str(e))
                else:
                    m = _margin(claim, a.metric, b.mean, margins) if claim.relation == ">=" else 0.0
                    row.update(difference=d.difference, low=d.low, high=d.high, p=d.p_value, n_seeds=d.n_seeds,
                               n_examples=d.n_examples, margin=m)
                    tested.append((row, d, a.higher_is_better))
            rows.append(row)
        # g = A − B signed so that positive is better; A worse by more than m: g < −m, tested at g = −m
        against = [r["p"] if claim.relation == "vs"
                   else min(1.0, 2 * (d.p_below(-r["margin"]) if higher else d.p_above(r["margin"])))
                   for r, d, higher in tested]
        for (r, d, higher), p_adj in zip(tested, holm(against), strict=True):
            sign, m = (1.0 if higher else -1.0), r["margin"]
            g, lo = sign * d.difference, min(sign * d.low, sign * d.high)
            r["p_holm"] = p_adj
            if claim.relation == "vs":
                r["verdict"] = NO_DIFFERENCE if p_adj >= alpha else f"{r['A'] if g > 0 else r['B']} better"
            elif g < -m and p_adj < alpha:
                r["verdict"] = FAILS
            elif lo > -m:  # '>': the interval above 0; '>=': above −margin (non-inferiority)
                r["verdict"] = HOLDS
            else:
                r["verdict"] = INCONCLUSIVE
            if r["verdict"] in (INCONCLUSIVE, NO_DIFFERENCE):
                r.update(_seeds_for(d, abs(g) if claim.relation == "vs" else g + m, alpha))
        counts = {v: sum(r["verdict"] == v for r in rows) for v in (HOLDS, FAILS, INCONCLUSIVE, NOT_RUN, REFUSED)}
        if not rows:
            verdict = "no case in this record"
        elif counts[REFUSED]:
            verdict = REFUSED
        elif claim.relation == "vs":
            found = {v: sum(r["verdict"] == v for r in rows)
                     for v in (f"{claim.better} better", f"{claim.than} better", NO_DIFFERENCE)}
            verdict = f"{REPORTED}: " + ", ".join(f"{v} {n}" for v, n in found.items())
        elif counts[FAILS]:
            verdict = FAILS
        elif counts[HOLDS] == len(rows):
            verdict = HOLDS
        else:
            verdict = INCONCLUSIVE
        claim_rows.append({"claim": claim.text, "verdict": verdict, "cases": len(rows), **counts,
                           "source": claim.source})
        case_rows += rows
    columns = ["claim", "task", "arch", "budget", "A", "B", "A_mean", "B_mean", "difference", "low", "high", "p",
               "p_holm", "margin", "n_seeds", "n_examples", "detectable", "seeds_needed", "verdict", "reason"]
    return pd.DataFrame(case_rows, columns=columns), pd.DataFrame(claim_rows)


def claims_markdown(cases: pd.DataFrame, verdicts: pd.DataFrame, alpha: float, title: str) -> str:
    """The claims table: a line per claim with its verdict, then its cases."""
    lines = [f"# {title}", "",
             f"Each claim is checked on every (task, arch, budget) case it covers by the paired test of the "
             f"tables (docs/statistics.md: a paired t over the seeds; with no spread the exact sign-flip, which "
             f"cannot call a difference below 6 seeds at α = 0.05; with one seed, a bootstrap over test "
             f"examples, example noise only): A − B in the task's metric with its {100 * (1 - alpha):g} % "
             f"interval. 'A > B' holds where the interval is above 0; 'A >= B' where it is above −margin "
             f"(non-inferiority: A not worse than B by more than the margin). A case fails where A is "
             f"significantly worse by more than the margin (0 for '>'; Holm over the claim's cases, "
             f"α = {alpha:g}); a claim holds when all its cases hold and fails when any fails. 'A vs B' assumes "
             f"no direction: each case is reported as A or B better (Holm-adjusted p below α) or no detectable "
             f"difference. An inconclusive case gives 'detectable': the smallest true distance from its "
             f"boundary the seeds run find with {POWER:.0%} power (their spread as measured), and 'seeds "
             f"needed': the seeds at which the observed distance would be found so (— where it is on the wrong "
             f"side, or one seed leaves the spread unknown).", ""]
    if verdicts.empty:
        return "\n".join(lines + ["No claims are stated for this grid (config `claims`).", ""])
    table = verdicts.rename(columns={"not run": "not_run"})
    lines += [table.to_markdown(index=False), "", "## Cases", ""]
    shown = cases.copy()
    shown["A − B"] = [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" if pd.notna(d) else "—"
                      for d, lo, hi in zip(shown["difference"], shown["low"], shown["high"], strict=True)]
    shown["p"] = [format_p(p) if pd.notna(p) else "—" for p in shown["p"]]
    shown["budget"] = [f"{b:g}" for b in shown["budget"]]
    shown["margin"] = [f"{m:.3g}" if pd.notna(m) and m > 0 else "—" for m in shown["margin"]]
    shown["detectable"] = [f"{v:.2f}" if pd.notna(v) and math.isfinite(v) else "∞" if pd.notna(v) else "—"
                           for v in shown["detectable"]]
    shown["seeds needed"] = [f"{int(v)}" if pd.notna(v) else "—" for v in shown["seeds_needed"]]
    for col in ("A_mean", "B_mean"):
        shown[col] = [f"{v:.2f}" if pd.notna(v) else "—" for v in shown[col]]
    keep = ["claim", "task", "arch", "budget", "A", "A_mean", "B", "B_mean", "A − B", "p", "margin", "n_seeds",
            "detectable", "seeds needed", "verdict", "reason"]
    lines += [shown[keep].to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(lines)


def claims_command(tracking_uri: str, experiment: str, alpha: float, claims: list[Claim],
                   csv: Path | None = None, margins: dict[str, float] | None = None) -> str:
    """What ``quantbench claims --grid G`` prints: the claims table of ``experiment``'s record."""
    records, latest = read_record(tracking_uri, experiment)
    cases, verdicts = evaluate_claims(claims, records, present_cells(latest), alpha, margins)
    refused = cases[cases["verdict"] == REFUSED]
    if len(refused):
        raise ExamplesError("; ".join(f"claim {r.claim!r} refused: {r.reason}" for r in refused.itertuples()))
    if csv is not None:
        write_text_atomic(csv, cases.to_csv(index=False))
    return claims_markdown(cases, verdicts, alpha, f"{experiment}: claims")
