"""Process plumbing of the workflow: the data center's lifetime, its port and token files, warm starts.

Nothing here imports torch, pandas or another package of this project (the warm starter
imports the command-line modules it is told to serve, in its own process, at run time):
the Snakefile imports `runtime.pipeline` while it is parsed, and parsing must stay cheap.
"""
