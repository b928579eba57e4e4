rule write_settings:
    output:
        "results/settings.json",
    params:
        settings=SETTINGS_JSON,
    log:
        "logs/write_settings.log",
    run:
        Path(output[0]).write_text(params.settings, encoding="utf-8")


rule train_base:
    input:
        settings=rules.write_settings.output[0],
    output:
        model="results/models/base.json",
    params:
        python=PYTHON,
        state_dir=STATE_DIR,
    conda:
        ENV
    log:
        "logs/train_base.log",
    shell:
        "{params.python} -m datacenter train-base --config {input.settings} "
        "--state-dir {params.state_dir} --out {output.model} 2> {log}"
