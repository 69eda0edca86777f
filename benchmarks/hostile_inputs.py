"""What featx does with each broken or hostile input of the corpus in tests/support/hostile.py:
embedded, skipped with its reason, or refused with its error. Prints JSON: the number of
cases, how many came out as expected, and one row per case.

    python benchmarks/hostile_inputs.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from featx.backbones import load_backbone
from support.hostile import PWNED, make_corpus, outcomes


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases = make_corpus(root)
        rows = outcomes(root, cases, load_backbone("efficientnet_lite0", image_size=64), root / "cache")
        code_ran = (root / PWNED).exists()
    print(json.dumps({
        "cases": len(rows),
        "as_expected": sum(r["as_expected"] for r in rows),
        "embedded": sum(r["outcome"] == "embedded" for r in rows),
        "skipped": sum(r["outcome"] == "skipped" for r in rows),
        "refused": sum(r["outcome"] == "refused" for r in rows),
        "yaml_tag_ran_code": code_ran,
        "rows": [{k: r[k] for k in ("case", "input", "outcome", "reason")} for r in rows],
    }, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
