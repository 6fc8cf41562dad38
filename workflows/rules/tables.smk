rule tables:
    """Regenerate the per-task tables and plots from the MLflow record (not from the files below)."""
    input:
        references=sorted({reference_file(c.task, c.arch, c.seed) for c in CFG.cells}),
        cells=[cell_file(c) for c in CFG.cells],
    output:
        tables=[report(f, caption="../report/table.rst", category="Tables") for f in table_files(["md"])],
        tex=table_files(["tex"]),
        csv=[report(f, caption="../report/table_csv.rst", category="Tables") for f in table_files(["csv"])],
        size=[report(f, caption="../report/size_plot.rst", category="Plots") for f in plot_files("png")
              if f.endswith("_size.png")],
        steps=[report(f, caption="../report/steps_plot.rst", category="Plots") for f in plot_files("png")
               if f.endswith("_steps.png")],
        calibration=[report(f, caption="../report/calibration_plot.rst", category="Plots") for f in plot_files("png")
                     if f.endswith("_calibration.png")],
        pdf=plot_files("pdf"),
        claims=[report(f, caption="../report/claims.rst", category="Claims") for f in claims_files("md")],
        claims_csv=claims_files("csv"),
    log:
        f"{LOGS}/tables.log",
    params:
        plan=PLAN,
        settings=tables_settings_digest,  # size tolerance, alpha, margins and claims: read from the plan
    shell:
        "quantbench tables --plan {params.plan:q} > {log:q} 2>&1"
