"""The self weight's floor only with two or more good images (scratch; imported for its patch).

    FLOOR_ONE=1 PYTHONPATH=src:experiments ... python experiments/floor_one.py cats [shots] > OUT.jsonl
    FLOOR_ONE=1 ... python experiments/pcb_repaired.py > OUT.jsonl     # pcb_repaired imports this module

Registration never weighs self-similarity below ¼ (``vision.learn.MIN_SELF_WEIGHT``), which paid at
4 shots and with all references and changed nothing at one shot on the dev products when it was
added. With ``FLOOR_ONE=1`` a product of a single good image may choose weight 0 (plain nearest
neighbour) again, its synthetic defects deciding as for the other weights. Rows as ``window_knn.py``.
"""
import os, sys

from iad_agent.vision import learn as learn_module
from iad_agent.vision.scoring import WEIGHTS

FLOOR_ONE = bool(os.environ.get('FLOOR_ONE'))
if FLOOR_ONE:
    _learn = learn_module.learn

    def learn(bank, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN201
        saved = learn_module.SELF_WEIGHTS
        if len(bank) < 2:
            learn_module.SELF_WEIGHTS = WEIGHTS
        try:
            return _learn(bank, *a, **k)
        finally:
            learn_module.SELF_WEIGHTS = saved

    learn_module.learn = learn

if __name__ == '__main__':
    sys.path.insert(0, 'experiments')
    import calib
    from iad_agent.eval.runner import set_threads

    set_threads(1)
    cats = sys.argv[1].split(',')
    shots = sys.argv[2].split(',') if len(sys.argv) > 2 else ['1']
    calib.print_look_rows(cats, shots, floor_one=FLOOR_ONE)
