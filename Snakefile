# driftloop: one job per (edge, round) of config/rounds.yaml; each round's checkpoint feeds
# that edge's next round, and edges run side by side. The data-center server runs outside the DAG, from onstart to onsuccess/onerror
# (runtime/pipeline.py).

from snakemake.utils import min_version

min_version("8.20")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/base.smk"
include: "workflow/rules/rounds.smk"
include: "workflow/rules/summary.smk"


wildcard_constraints:
    round=ROUND_ID.removeprefix("^").removesuffix("$"),
    edge=EDGE_ID.removeprefix("^").removesuffix("$"),


rule all:
    input:
        rules.summarize.output,


# Instant bookkeeping: on a cluster executor these run on the submitting host, not as jobs (docs/cluster.md).
localrules:
    all,
    write_settings,
    summarize,


onstart:
    start_services()


onsuccess:
    stop_services()


onerror:
    stop_services()
