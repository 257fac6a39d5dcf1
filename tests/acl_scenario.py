"""What uid 1000 (groups 1000 and 2001, umask 0) can do in a tree whose POSIX ACLs
tests/test_acl.py set; prints the outcomes as JSON. Standard library only."""

from __future__ import annotations

import errno
import json
import os
import sys


def outcome(fn):
    try:
        return ["ok", fn()]
    except OSError as exc:
        return ["err", errno.errorcode.get(exc.errno, str(exc.errno))]


def touch(path: str, mode: int = 0o666) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, mode))


def main(root: str) -> None:
    # umask 0: with a default ACL, ext4 ignores the umask, but the kernel applies it before FUSE
    # sees the mode unless FUSE_DONT_MASK is negotiated, which pyfuse3 cannot ask for (README)
    os.umask(0)
    p = lambda *names: os.path.join(root, *names)
    out: dict[str, object] = {}
    for name in ("shared/doc", "denied", "grouped", "masked", "plain"):
        for label, flag in (("R", os.R_OK), ("W", os.W_OK)):
            out[f"access {name} {label}"] = os.access(p(name), flag)
        out[f"read {name}"] = outcome(lambda name=name: open(p(name), "rb").read().decode())
        out[f"write {name}"] = outcome(lambda name=name: open(p(name), "ab").write(b"+"))
    out["list shared"] = outcome(lambda: sorted(os.listdir(p("shared"))))
    out["create in shared"] = outcome(lambda: touch(p("shared", "mine")))
    out["mkdir in inherit"] = outcome(lambda: os.mkdir(p("inherit", "sub"), 0o777))
    out["create in inherit"] = outcome(lambda: touch(p("inherit", "file"), 0o666))
    out["create 0600 in inherit"] = outcome(lambda: touch(p("inherit", "private"), 0o600))
    out["create in inherit/sub"] = outcome(lambda: touch(p("inherit", "sub", "deeper"), 0o644))
    out["symlink in inherit"] = outcome(lambda: os.symlink("file", p("inherit", "link")))
    out["chmod own file with an ACL"] = outcome(lambda: os.chmod(p("mine-acl"), 0o640))
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
