"""Lay the ELPV cells out as `iad eval --dataset folder` reads them: one product per cell type,
150 good cells (defect probability 0) and 100 defective ones (probability >= 0.67), evenly spaced."""
import sys
from pathlib import Path
import numpy as np
src = Path(sys.argv[1]); out = Path(sys.argv[2])
rows = [l.split() for l in (src / 'labels.csv').read_text().splitlines() if l.strip()]
for kind in ('mono', 'poly'):
    for label, keep, n in (('good', lambda p: p == 0.0, 150), ('defective', lambda p: p >= 0.67, 100)):
        files = [src / r[0] for r in rows if r[2] == kind and keep(float(r[1]))]
        idx = np.unique(np.linspace(0, len(files) - 1, n).round().astype(int))
        d = out / kind / label
        d.mkdir(parents=True, exist_ok=True)
        for i in idx:
            link = d / files[i].name
            if not link.exists():
                link.symlink_to(files[i])
