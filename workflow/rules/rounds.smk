rule edge_round:
    input:
        previous=previous_checkpoint,
        settings=rules.write_settings.output[0],
    output:
        checkpoint="results/rounds/{round}/checkpoint.json",
        metrics="results/rounds/{round}/metrics.json",
        predictions="results/rounds/{round}/predictions.parquet",
    params:
        python=PYTHON,
        spec=round_spec,
        rounds=config["rounds"],
        port_file=str(PORT_FILE),
        token_file=str(TOKEN_FILE),
        outdir=subpath(output.checkpoint, parent=True),
        socket=str(WARM_SOCKET),
    conda:
        ENV
    log:
        "logs/rounds/{round}.log",
    shell:
        "{params.python} -m mlcore.warm run --socket {params.socket} edge -- round --config {input.settings} --rounds {params.rounds} "
        "--round {wildcards.round} --previous {input.previous} --port-file {params.port_file} "
        "--token-file {params.token_file} --outdir {params.outdir} 2> {log}"
