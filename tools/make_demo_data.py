"""python tools/make_demo_data.py [--out DIR] [--size PX]: the offline demo dataset (see ppcls_ext.cli.make_demo_data)"""
from ppcls_ext.cli.make_demo_data import main

if __name__ == "__main__":
    main()
