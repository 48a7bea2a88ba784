"""python tools/model_zoo.py [-n GLOB ...] [--no-flops]: the model zoo as a markdown table (see ppcls_ext.cli.model_zoo)"""
from ppcls_ext.cli.model_zoo import main

if __name__ == "__main__":
    main()
