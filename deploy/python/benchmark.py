"""python deploy/python/benchmark.py -m MODEL [-m ...] [--backends ...] [--batch-sizes 1,8] [--markdown FILE]: the
deployment backends' latency side by side (see ppcls_ext.cli.benchmark)"""
from ppcls_ext.cli.benchmark import main

if __name__ == "__main__":
    main()
