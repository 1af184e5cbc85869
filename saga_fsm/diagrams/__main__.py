"""``python -m saga_fsm.diagrams [DIR]``: regenerate the committed diagrams (default
``diagrams/``): the example definitions and both lifecycles, as DOT and PNG."""

from __future__ import annotations

import sys

from saga_fsm._errors import SagaError
from saga_fsm.diagrams._gallery import write_gallery


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: python -m saga_fsm.diagrams [DIR]", file=sys.stderr)
        return 2
    try:
        for path in write_gallery(argv[0] if argv else "diagrams"):
            print(f"wrote {path}")
    except (SagaError, OSError) as err:
        print(f"saga_fsm.diagrams: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
