"""Writing a benchmark's generated block into docs/benchmarks.md."""

import os
import re


def replace_block(path, pattern, section, block):
    """Writes `block` into `path`, keeping the text around it.

    Where `pattern` (a compiled regex of the block's markers) matches, the
    match is replaced with `block`. Otherwise the block is appended at the end
    of the `## section` section, which is appended first (to a new
    "# Benchmarks" file, if `path` does not exist) when there is none.
    """
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        heading = re.compile(rf"^## {re.escape(section)}[ \t]*$", re.M)
        if not heading.search(text):
            text = text.rstrip("\n") + f"\n\n## {section}\n"
        start = heading.search(text).end()
        following = re.compile(r"^## ", re.M).search(text, start)
        end = following.start() if following else len(text)
        text = text[:end].rstrip("\n") + "\n\n" + block + "\n\n" + text[end:].lstrip("\n")
    with open(path, "w") as file:
        file.write(text.rstrip("\n") + "\n")
