"""Rewrite the README's mount options table from MountConfig: .venv/bin/python scripts/update_readme_options.py"""
import re
from pathlib import Path
from chunkfs.mount.helper import options_markdown
p = Path(__file__).resolve().parent.parent / "README.md"
s = p.read_text()
s = re.sub(r"<!-- mount options: generated from MountConfig -->\n.*?\n<!-- end of mount options -->",
           lambda m: "<!-- mount options: generated from MountConfig -->\n" + options_markdown() + "\n<!-- end of mount options -->", s, flags=re.S)
p.write_text(s)
