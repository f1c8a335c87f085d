"""Stage `validate`: check the whole params.yaml before anything runs (it depends on every key).

Every stage validates all of params.yaml when it loads it; this stage also fails for a bad key
that no other stage declares (so no other stage would rerun and report it).
"""
from __future__ import annotations

import stages
from pipeline import config


def main() -> None:
    params = config.load()
    print(f"validate: params.yaml is valid ({len(params.experts)} experts, methods {sorted(params.distill.methods)})")


if __name__ == "__main__":
    stages.run(main)
