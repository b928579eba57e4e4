rule write_settings:
    output:
        "results/settings.json",
    params:
        python=PYTHON,
        settings=SETTINGS_JSON,
    conda:
        ENV
    log:
        "logs/write_settings.log",
    # shell, not run: a run block re-parses the whole workflow in a new process
    shell:
        "{params.python} -c 'import sys; open(sys.argv[1], \"w\").write(sys.argv[2])' "
        "{output} {params.settings:q} 2> {log}"


rule train_base:
    input:
        settings=rules.write_settings.output[0],
    output:
        model="results/models/base.json",
    params:
        launch=launch("datacenter"),
        state_dir=STATE_DIR,
    conda:
        ENV
    log:
        "logs/train_base.log",
    shell:
        "{params.launch} train-base --config {input.settings} "
        "--state-dir {params.state_dir} --out {output.model} 2> {log}"
