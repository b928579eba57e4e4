rule summarize:
    input:
        checkpoints=expand("results/rounds/{round}/checkpoint.json", round=ROUND_IDS),
        metrics=expand("results/rounds/{round}/metrics.json", round=ROUND_IDS),
    output:
        table="results/summary.csv",
        accuracy=report("results/plots/accuracy.svg", caption="../report/accuracy.rst", category="Rounds"),
        labels=report("results/plots/labels.svg", caption="../report/labels.rst", category="Rounds"),
    params:
        python=PYTHON,
        script=SUMMARIZE,
    conda:
        ENV
    log:
        "logs/summarize.log",
    shell:
        "{params.python} {params.script} --metrics {input.metrics} --checkpoints {input.checkpoints} "
        "--table {output.table} "
        "--accuracy-plot {output.accuracy} --labels-plot {output.labels} 2> {log}"
