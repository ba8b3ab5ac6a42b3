"""`python -m baldr_ops.engines.max.entry <max sub-command> [args]`: MAX's CLI with our patches.

MAX's model worker is a multiprocessing *spawn* child that re-imports this module as
`__mp_main__`; the patches run only under `__main__`, in the parent, where the planner and the
OpenAI routes live.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from baldr_ops.engines.max.patches import apply_all

    apply_all()
    from max._entrypoints.pipelines import main as max_main

    sys.argv = ["max", *argv]
    return max_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
