"""Nothing in the repository refers to a file outside it.

The project's reference documentation lives in docs/; a user who clones the
repository has nothing beside it, so no tracked text file may point to
``../shared`` or cite sections of a specification document that is not here.
"""

import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FORBIDDEN = [
    re.compile(r"\.\./shared"),
    re.compile(r"shared/(SPEC|DATA|ANCHORS)\.md"),
    re.compile(r"\bSPEC ?(§|\d)"),
    re.compile(r"\bDATA\.md\b"),
]
TEXT = (".py", ".md", ".sh", ".toml", ".txt", ".cfg", ".json", ".yaml", ".yml")


def tracked_files():
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if out.returncode:  # not a git checkout (e.g. an sdist): walk the tree
        for root, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in files:
                yield os.path.relpath(os.path.join(root, f), REPO)
        return
    yield from out.stdout.splitlines()


def test_no_reference_points_outside_the_repository():
    offending = []
    for path in tracked_files():
        if not path.endswith(TEXT) or path == "tests/test_self_contained.py":
            continue
        with open(os.path.join(REPO, path), encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if any(p.search(line) for p in FORBIDDEN):
                    offending.append(f"{path}:{number}: {line.strip()[:100]}")
    assert not offending, "references outside the repository:\n" + "\n".join(offending)
