"""Run the ``iad`` command with the zoom's reference crops seen at the query crop's scale.

    python experiments/zoomscale.py eval --dataset all --shots 1 --shots 4 --seeds 3 --max-test 60 \\
        --policy knn --policy embedded --policy embedded-fixed-weights --workers 1 --out /work/zoomscale-results/same
    python experiments/zoomscale.py register hazelnut --normals .../hazelnut/train/good --workspace /tmp/x

Sets :data:`iad_agent.tools.zoom.SAME_SCALE` (off in the package) for this process, then runs
the CLI unchanged: registration's zoom calibration and tool-weight fit, and inspection, all see
the reference crops at the query's scale. ``iad eval`` spawns its workers afresh (they would not
inherit the switch), so ``--workers`` must be 1. ``--off`` runs the package default, for timing
the two through the same script.
"""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    off = "--off" in args
    args = [a for a in args if a != "--off"]
    if args[:1] == ["eval"] and ("--workers" not in args or args[args.index("--workers") + 1] != "1"):
        sys.exit("zoomscale.py: pass --workers 1 (spawned workers would not see the switch)")
    from iad_agent.cli import app
    from iad_agent.tools import zoom

    zoom.SAME_SCALE = not off
    print(f"zoomscale.py: SAME_SCALE={zoom.SAME_SCALE}", file=sys.stderr)
    app(args, prog_name="iad")


if __name__ == "__main__":
    main()
