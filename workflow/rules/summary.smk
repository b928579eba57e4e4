rule summarize:
    input:
        checkpoints=expand("results/edges/{edge}/rounds/{round}/checkpoint.json", zip, edge=JOB_EDGES, round=JOB_ROUNDS),
        metrics=expand("results/edges/{edge}/rounds/{round}/metrics.json", zip, edge=JOB_EDGES, round=JOB_ROUNDS),
    output:
        table="results/summary.csv",
        accuracy=report("results/plots/accuracy.svg", caption="../report/accuracy.rst", category="Rounds"),
        labels=report("results/plots/labels.svg", caption="../report/labels.rst", category="Rounds"),
        heatmap=report("results/plots/fleet_accuracy.svg", caption="../report/fleet_accuracy.rst", category="Fleet"),
        queue_wait=report("results/plots/queue_wait.svg", caption="../report/queue_wait.rst", category="Fleet"),
    params:
        python=PYTHON,
        script=SUMMARIZE,
        edges=JOB_EDGES,
    conda:
        ENV
    log:
        "logs/summarize.log",
    shell:
        "{params.python} {params.script} --edges {params.edges} --metrics {input.metrics} "
        "--checkpoints {input.checkpoints} --table {output.table} "
        "--accuracy-plot {output.accuracy} --labels-plot {output.labels} "
        "--heatmap-plot {output.heatmap} --queue-wait-plot {output.queue_wait} 2> {log}"
