"""Permission checks a non-root user meets, run in one directory tree; prints their outcomes as
JSON. tests/test_permissions.py prepares the same tree (as root) on chunkfs and on the local
disk, runs this as uid 1000 with groups 1000 (primary) and 2001 (supplementary), and compares.

Standard library only: it runs under /usr/bin/python3 as an unprivileged user.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys


def outcome(fn):
    try:
        value = fn()
        return ["ok", value]
    except OSError as exc:
        return ["err", errno.errorcode.get(exc.errno, str(exc.errno))]


def mode_and_owner(path: str):
    st = os.lstat(path)
    return [oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid]


def write_some(path: str) -> None:
    with open(path, "r+b") as f:
        f.write(b"x")


def truncate_open(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))


def main(root: str) -> None:
    p = lambda *names: os.path.join(root, *names)
    out: dict[str, object] = {}
    # ownership: only root gives a file away; the owner may chgrp to a group they are in
    out["chown to root"] = outcome(lambda: os.chown(p("mine"), 0, -1))
    out["chown to self"] = outcome(lambda: os.chown(p("mine"), 1000, -1))
    out["chgrp to a supplementary group"] = outcome(lambda: os.chown(p("mine"), -1, 2001))
    out["chgrp to a foreign group"] = outcome(lambda: os.chown(p("mine"), -1, 2002))
    out["chgrp of someone else's file"] = outcome(lambda: os.chown(p("theirs"), -1, 2001))
    out["after chgrp"] = mode_and_owner(p("mine"))
    # setuid/setgid go on chgrp by a non-root owner, and on writes
    out["chgrp of a setuid file"] = outcome(lambda: os.chown(p("suid-chgrp"), -1, 2001))
    out["setuid after chgrp"] = mode_and_owner(p("suid-chgrp"))
    out["write to a setuid file"] = outcome(lambda: write_some(p("suid-write")))
    out["setuid after write"] = mode_and_owner(p("suid-write"))
    out["write to a setgid group-exec file"] = outcome(lambda: write_some(p("sgid-write")))
    out["setgid after write"] = mode_and_owner(p("sgid-write"))
    out["truncate a setuid file at open"] = outcome(lambda: truncate_open(p("suid-trunc")))
    out["setuid after O_TRUNC"] = mode_and_owner(p("suid-trunc"))
    out["truncate() a setuid file"] = outcome(lambda: os.truncate(p("suid-truncate"), 1))
    out["setuid after truncate()"] = mode_and_owner(p("suid-truncate"))
    out["chmod g+s to a foreign group"] = outcome(lambda: os.chmod(p("foreign-group"), 0o2755))
    out["mode after chmod g+s"] = mode_and_owner(p("foreign-group"))
    out["chmod someone else's file"] = outcome(lambda: os.chmod(p("theirs"), 0o777))
    # setgid directories hand their group down, and the bit to subdirectories
    out["mkdir in a setgid dir"] = outcome(lambda: os.mkdir(p("sgid-dir", "sub"), 0o755))
    out["subdir"] = mode_and_owner(p("sgid-dir", "sub")) if os.path.exists(p("sgid-dir", "sub")) else None
    out["create in a setgid dir"] = outcome(lambda: os.close(os.open(p("sgid-dir", "file"), os.O_CREAT | os.O_WRONLY, 0o2755)))
    out["file"] = mode_and_owner(p("sgid-dir", "file")) if os.path.exists(p("sgid-dir", "file")) else None
    # sticky directories: only the owner of an entry (or of the directory) removes or renames it
    out["unlink another's file in a sticky dir"] = outcome(lambda: os.unlink(p("sticky", "theirs")))
    out["rename another's file in a sticky dir"] = outcome(lambda: os.rename(p("sticky", "theirs"), p("sticky", "moved")))
    out["rename over another's file in a sticky dir"] = outcome(lambda: os.rename(p("sticky", "mine"), p("sticky", "theirs")))
    out["unlink own file in a sticky dir"] = outcome(lambda: os.unlink(p("sticky", "mine2")))
    out["unlink another's file in a plain dir"] = outcome(lambda: os.unlink(p("open", "theirs")))
    # access() and open() tell the truth, supplementary groups included
    for name in ("group-r", "group-rw", "other-r", "foreign-group-r", "owner-none"):
        for label, flag in (("R", os.R_OK), ("W", os.W_OK), ("X", os.X_OK)):
            out[f"access {name} {label}"] = os.access(p(name), flag)
        out[f"open {name} for reading"] = outcome(lambda name=name: os.close(os.open(p(name), os.O_RDONLY)))
        out[f"open {name} for writing"] = outcome(lambda name=name: os.close(os.open(p(name), os.O_WRONLY)))
    out["list a group-only dir"] = outcome(lambda: sorted(os.listdir(p("group-dir"))))
    out["create in a group-only dir"] = outcome(lambda: os.close(os.open(p("group-dir", "new"), os.O_CREAT | os.O_WRONLY)))
    out["traverse a dir without x"] = outcome(lambda: os.stat(p("no-x", "inside")).st_size)
    out["utime of another's file"] = outcome(lambda: os.utime(p("theirs"), (1, 1)))
    out["touch another's writable file"] = outcome(lambda: os.utime(p("other-rw")))
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
