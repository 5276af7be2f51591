"""Sweeps declared in config files (`get_hyper(h)`) and `twlv sweep`.

    hyper.py    the big_vision/scenic sweep vocabulary (sweep, product, zipit, chainit, fixed)
                and run names from overrides
    expand.py   a config file's sweep -> runs, each validated before anything runs
    execute.py  runs one after another locally (subprocesses of `twlv train`) or through a
                launcher script; each run's state in its workdir
    results.py  results.md, results.csv and results.png from the runs' metrics.jsonl
    cli.py      `twlv sweep`
"""
