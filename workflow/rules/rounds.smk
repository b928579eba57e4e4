rule edge_round:
    input:
        previous=previous_checkpoint,
        settings=rules.write_settings.output[0],
        peers=peer_checkpoints,
    output:
        checkpoint="results/edges/{edge}/rounds/{round}/checkpoint.json",
        metrics="results/edges/{edge}/rounds/{round}/metrics.json",
        predictions="results/edges/{edge}/rounds/{round}/predictions.parquet",
        spec="results/edges/{edge}/rounds/{round}/spec.json",
    params:
        # This edge's entry of this round of rounds.yaml, its stream offset and the edge id:
        # the job writes it to spec.json, which the edge reads. Editing one edge's round
        # changes this param for that (edge, round) only, so Snakemake reruns it (and, through
        # the edge's checkpoint chain, its later rounds), nothing else; changing a round's size
        # moves that edge's later offsets.
        spec=round_spec,
        launch=launch("edge"),
        endpoint=ENDPOINT_FILE,
        token_file=TOKEN_FILE,
        outdir=subpath(output.checkpoint, parent=True),
        store="results/edges/{edge}/models",
    conda:
        ENV
    log:
        "logs/edges/{edge}/rounds/{round}.log",
    shell:
        "printf '%s\\n' {params.spec:q} > {output.spec} && "
        "{params.launch} round --config {input.settings} --rounds {output.spec} "
        "--edge-id {wildcards.edge} --round {wildcards.round} --previous {input.previous} "
        "--endpoint {params.endpoint} --token-file {params.token_file} "
        "--outdir {params.outdir} --store {params.store} --peers {input.peers} 2> {log}"
