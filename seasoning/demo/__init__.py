"""The demo (`make demo`, `python -m seasoning.demo`): the method end to end on Fashion-MNIST.

`stages` builds the commands the demo runs and records the finished ones; `selection` picks
the soups of the sweeps to re-check; `report` writes report.md from the result files; `config`
is the demo config schema (`configs/demo.py` starts from it).
"""
