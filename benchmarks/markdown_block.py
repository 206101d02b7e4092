"""Writing a benchmark's generated block into docs/benchmarks.md."""

import os


def replace_block(path, pattern, section, block):
    """Replaces the text `pattern` (a compiled regex of the block's markers)
    matches in `path` with `block`, keeping the text around it; without a
    match, appends `## section` with the block (creating the file)."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + f"\n\n## {section}\n\n{block}\n"
    with open(path, "w") as file:
        file.write(text.rstrip("\n") + "\n")
