"""`twlv plan`: the real train step compiled ahead of time for a target it does not run on.

    targets.py  target strings (cpu:N, tpu:v5e:16x16, gpu:h100:8) -> compile-only devices,
                memory and peak FLOP/s per chip
    compile.py  state and shardings for those devices, the compiled step's memory per
                device by kind, analytic FLOPs, step time at a stated MFU
    cli.py      `twlv plan`, with remat and microbatch suggestions that are compiled to fit
"""
