rule edge_round:
    input:
        previous=previous_checkpoint,
        settings=rules.write_settings.output[0],
    output:
        checkpoint="results/rounds/{round}/checkpoint.json",
        metrics="results/rounds/{round}/metrics.json",
        predictions="results/rounds/{round}/predictions.parquet",
        spec="results/rounds/{round}/spec.json",
    params:
        # This round's entry of rounds.yaml and its stream offset: the job writes it to
        # spec.json, which the edge reads. Editing one round's shift changes this param for
        # that round only, so Snakemake reruns it (and, through the checkpoint chain, the
        # later rounds), nothing else; changing a round's size moves the later offsets.
        spec=round_spec,
        launch=launch("edge"),
        port_file=PORT_FILE,
        token_file=TOKEN_FILE,
        outdir=subpath(output.checkpoint, parent=True),
    conda:
        ENV
    log:
        "logs/rounds/{round}.log",
    shell:
        "printf '%s\\n' {params.spec:q} > {output.spec} && "
        "{params.launch} round --config {input.settings} --rounds {output.spec} "
        "--round {wildcards.round} --previous {input.previous} --port-file {params.port_file} "
        "--token-file {params.token_file} --outdir {params.outdir} 2> {log}"
