r"""`make demo`: the whole method on Fashion-MNIST in minutes on a 2-core CPU.

  python -m seasoning.demo --config=configs/demo.py --workdir=runs/demo
  python -m seasoning.demo --config=configs/demo.py:runlocal --workdir=/tmp/demo   # seconds

Runs the shipped configs (fmnist_cnn_linf.py and its children, soup_fmnist.py, shift_fmnist.py)
cut down to fit: what was cut relative to the paper's recipe is listed in the report. Args:
runlocal (every stage at a few steps and points: the integration test).
"""

from seasoning import config_lib
from seasoning.demo import config as demo_config


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, runlocal=False)
    c = demo_config.base_demo_config()
    # 400 steps (0.85 epoch) of Linf adversarial training with APGD-CE 3 at lr 0.1, then 60
    # steps (7,680 images) of each fine-tune with APGD 5 (the child configs: 10), at 5x their
    # lr (0.01 barely moves a model in 60 steps).
    # L2 at 2 rather than the registry's 0.8 for Fashion-MNIST: at 0.8 the Linf parent is
    # already as robust as a short L2 fine-tune makes it (measured: 66% and 66% on the demo's
    # 100 points), so nothing trades; at 2 the fine-tune gains (30% -> 42%).
    c.threats = ("linf:0.1", "l2:2", "l1:10")
    c.parent.update(max_steps=400, attack_steps=3, lr=0.1)
    c.children.update(max_steps=60, attack_steps=5, lr=0.05)
    c.points.update(n_examples=100, batch_size=100)
    # The sweep: APGD-CE 10 iterations, then APGD-T on 1 target class, 10 iterations.
    c.sweep.update(line_step=0.1, simplex_step=0.2)
    c.sweep.attack.update(version="fast", n_iter=10, n_target_classes=1)
    # The re-check: the four attacks of AutoAttack standard, each budget cut.
    c.recheck.attack.update(
        version="standard",
        n_iter=25,
        n_restarts=1,
        n_target_classes=3,
        fab_n_iter=25,
        fab_n_target_classes=2,
        n_queries=200,
    )
    c.shift.update(grid_step=0.25, n_adaptation=500, n_unseen=1000, learned_steps=20)
    # Measured on a 2-core Intel Xeon (see README).
    c.expected_seconds.update(parent=150, children=115, sweep=180, recheck=290, shift=125)
    if arg.runlocal:
        c.runlocal = True
        c.parent.update(max_steps=4, attack_steps=2)
        c.children.update(max_steps=4, attack_steps=2)
        c.points.update(n_examples=8, batch_size=8)
        c.sweep.update(line_step=0.5, simplex_step=0.5)
        c.sweep.attack.update(n_iter=2, n_target_classes=1)
        c.recheck.attack.update(
            n_iter=2, n_target_classes=1, fab_n_iter=2, fab_n_target_classes=1, n_queries=10
        )
        c.shift.update(grid_step=0.5, n_adaptation=75, n_unseen=75, learned_steps=3)
        c.expected_seconds.update(parent=25, children=35, sweep=40, recheck=60, shift=30)
    return c
