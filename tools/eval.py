"""python tools/eval.py -c CONFIG [-o KEY.PATH=VALUE ...]  (see ppcls_ext.cli)"""
from ppcls_ext.cli import main

if __name__ == "__main__":
    raise SystemExit(main("eval"))
