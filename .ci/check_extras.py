"""Resolves each accelerator extra of the installed `seasoning` (`make check-extras`).

For Python 3.11 and 3.12 on Linux x86-64, `pip install --dry-run` of the project's JAX
requirement with the extra's own requirements, from the configured index; prints the JAX
packages (and libtpu) pip would pick, or what it could not find. Installs nothing.
"""

import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile

EXTRAS = ("cuda", "cuda13", "tpu")
PYTHONS = ("3.11", "3.12")
PLATFORMS = ("manylinux_2_31_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64", "any")  # fmt: skip


def requirements(extra: str) -> list[str]:
    """The requirements `seasoning[extra]` adds to the core JAX one (markers dropped)."""
    out = []
    for requirement in importlib.metadata.requires("seasoning") or []:
        spec, _, marker = requirement.partition(";")
        core = not marker and spec.startswith("jax")
        if core or re.search(rf"extra == \"{extra}\"", marker):
            out.append(spec.strip())
    return out


def main() -> int:
    failed = 0
    for python in PYTHONS:
        for extra in EXTRAS:
            specs = requirements(extra)
            with tempfile.TemporaryDirectory() as target:
                command = [
                    sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--dry-run", "--target", target, "--only-binary=:all:",
                    "--python-version", python, *(f"--platform={p}" for p in PLATFORMS),
                    "--report", "-", *specs,
                ]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True)
            print(f"== Python {python}, seasoning[{extra}] ({', '.join(specs)})")
            if done.returncode:
                failed += 1
                errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
                missing = [line for line in errors if "Could not find a version" in line]
                print("   not resolvable here: " + (missing or errors or ["?"])[-1][:300])
                continue
            report = json.loads(done.stdout)
            picked = sorted(f"{item['metadata']['name']}=={item['metadata']['version']}"
                            for item in report["install"]
                            if item["metadata"]["name"].startswith(("jax", "libtpu")))  # fmt: skip
            print("   " + " ".join(picked))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
