"""Write (or with --check, verify) the committed JSON Schema document: python -m contracts.schema"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from contracts.messages import json_schema

PATH = Path(__file__).with_name("edgecap-v1.schema.json")


def render() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    if "--check" in sys.argv[1:]:
        if PATH.read_text() != render():
            sys.stderr.write(f"{PATH} is stale: run python -m contracts.schema\n")
            return 1
        return 0
    PATH.write_text(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
