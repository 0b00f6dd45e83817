"""Write ``constraints.txt``: the exact versions of everything installed in this environment, which
``.ci/run`` then installs with (``PIP_CONSTRAINT``), so a fresh machine gets what was tested.

Run it in an environment where ``.ci/run`` passed, e.g. the one CI builds:
    .ci-venv/bin/python scripts/update_constraints.py        # then commit constraints.txt

lorakit itself and its plugin packages (installed from this checkout) and pip are left out.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lorakit.runs.environment import canonical, installed

LEFT_OUT = {"pip"}


def main() -> None:
    packages = {
        name: version
        for name, version in installed().items()
        if name not in LEFT_OUT and not name.startswith("lorakit")
    }
    head = [
        "# Versions .ci/run was green with; .ci/run installs under them (PIP_CONSTRAINT).",
        f"# Regenerate: scripts/update_constraints.py (Python {platform.python_version()}, {platform.machine()}).",
    ]
    lines = head + [f"{canonical(name)}=={version}" for name, version in sorted(packages.items())]
    out = Path(__file__).resolve().parent.parent / "constraints.txt"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(packages)} packages)")


if __name__ == "__main__":
    main()
