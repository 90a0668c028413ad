"""Tools around the method, never imported by it: the command line (cli), the speed
benchmark (bench, flops), parameter sweeps (sweep, executors) and the side-by-side run of
the official code (compare).
"""
