"""Where benchmark results go: bench/results/<kind>-<gpu>.json, and a copy under $OUT on the device machine."""

from __future__ import annotations

import json
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def save_results(doc: dict, kind: str, out: str | None = None) -> list[str]:
    gpu = doc["meta"]["device"].replace("NVIDIA ", "").replace(" ", "-")
    paths = [out or os.path.join(RESULTS, f"{kind}-{gpu}.json")]
    if os.environ.get("OUT"):
        paths.append(os.path.join(os.environ["OUT"], f"{kind}-{gpu}.json"))
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
    print("wrote", paths)
    return paths
