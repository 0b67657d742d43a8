"""The package's global look on more test images than ``iad eval`` takes: test AUROC, false-alarm and miss rates.

Per k-shot group (1, 4 and all shots; 3 seeds) of the named categories (``elpv``: 100 good + 100
defective cells; others: at most 100 defective test images), the product is registered by the
package on ``PYTHONPATH`` (run it from two checkouts to compare them), and the fused look's scores
are read at its calibrated threshold. One JSON row per group on stdout.

    PYTHONPATH=src:experiments IAD_LAB_CACHE=/work/coarse/cache python experiments/look_check.py elpv,magnetic_tile > OUT.jsonl
"""
import json
import sys

sys.path.insert(0, "experiments")
import calib  # noqa: E402
from iad_agent.eval.runner import set_threads  # noqa: E402

set_threads(1)
for cat, k, seed, refs, test, y in calib.groups(sys.argv[1].split(","), True, 100, ["1", "4", "all"]):
    print(json.dumps(dict(cat=cat, shots=str(k), seed=seed, **calib.look_row(refs, test, y))), flush=True)
