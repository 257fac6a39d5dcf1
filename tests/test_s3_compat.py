"""ceph's s3-tests against the gateway: the tests of `test_s3.py` named in `s3tests/allow-list.txt`
run, unchanged, in a pytest of their own against a gateway on a real cluster, and every one of
them must pass. `s3tests/left-out.txt` says, grouped by cause, why the others are not on the list.

The suite is vendored (`tests/s3tests/`, MIT, its LICENSE beside it, the commit in
`s3tests/PINNED`), as CI reaches no repository. `S3TESTS_WHOLE_FILE=outcomes.txt pytest
tests/test_s3_compat.py -k whole_file` runs the whole of test_s3.py against the same kind of
gateway and writes each test's outcome to that file: what to look at when the list changes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import _cluster
from test_gateway import running_gateway

SUITE = Path(__file__).parent / "s3tests"
TEST_FILE = "s3tests/functional/test_s3.py"
ALLOW_LIST = SUITE / "allow-list.txt"
PER_TEST_TIMEOUT_S = 120


def allow_listed() -> list[str]:
    """The test names on the allow-list (`#` starts a comment)."""
    names = (line.split("#", 1)[0].strip() for line in ALLOW_LIST.read_text().splitlines())
    return [name for name in names if name]


def s3tests_conf(s3_endpoint: str, keys: dict[str, dict]) -> str:
    """The suite's configuration: its main, alt and tenant users are three access keys of the
    gateway, each known to S3 by its uid (the canonical id the gateway gives owners; the IAM
    sections only name keys: the IAM tests are not on the list)."""
    host, port = s3_endpoint.removeprefix("http://").split(":")
    lines = ["[DEFAULT]", f"host = {host}", f"port = {port}", "is_secure = False", "ssl_verify = False", "",
             "[fixtures]", "bucket prefix = s3t-{random}-", ""]
    for section, name in (("s3 main", "main"), ("s3 alt", "alt"), ("s3 tenant", "tenant"), ("iam", "main"),
                          ("iam root", "main"), ("iam alt root", "alt")):
        key = keys[name]
        lines += [f"[{section}]", f"display_name = {key['uid']}", f"user_id = {key['uid']}",
                  f"email = {name}@example.com",
                  f"access_key = {key['access_key_id']}", f"secret_key = {key['secret_access_key']}"]
        if section == "s3 tenant":
            lines.append("tenant = testx")
        lines.append("")
    return "\n".join(lines)


def run_s3tests(gateway, keys: dict[str, dict], workdir: Path, names: list[str] | None) -> dict[str, tuple[str, str]]:
    """Runs the named tests of test_s3.py (all of them for None) in a pytest of their own
    against `gateway`, as the users `keys` names; test name -> (outcome: passed, failed, error
    or skipped; its message)."""
    conf = workdir / "s3tests.conf"
    conf.write_text(s3tests_conf(gateway.s3, keys))
    report = workdir / "s3tests-report.xml"
    targets = [TEST_FILE] if names is None else [f"{TEST_FILE}::{name}" for name in names]
    args_file = workdir / "s3tests-args.txt"
    args_file.write_text("\n".join(targets) + "\n")
    subprocess.run([sys.executable, "-m", "pytest", "-c", str(SUITE / "pytest.ini"), "--rootdir", str(SUITE),
                    "-p", "no:randomly", "-p", "no:cacheprovider", "-q", "--tb=line", "-rfE",
                    f"--timeout={PER_TEST_TIMEOUT_S}", f"--junitxml={report}", f"@{args_file}"],
                   cwd=SUITE, env={**os.environ, "S3TEST_CONF": str(conf)}, check=False)
    return _outcomes(report)


def _outcomes(report: Path) -> dict[str, tuple[str, str]]:
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = " ".join((child.get("message") or "").split())[:200]
                break
        outcomes[case.get("name", "")] = (outcome, message)
    return outcomes


@pytest.fixture(scope="module")
def s3tests_gateway(tmp_path_factory):
    """A gateway of its own on a small cluster (one chunkserver, goal 1: the suite tests the
    protocol, not the replicas). Its root is open to all as /tmp is (mode 1777), so that every
    user of the suite can make buckets and remove only its own."""
    for cluster in _cluster(tmp_path_factory, chunkservers=1, goal=1):
        os.chmod(cluster.mnt, 0o1777)
        with running_gateway(cluster, tmp_path_factory.mktemp("s3tests-gateway"), cluster.port + 60,
                             cluster.port + 61) as gateway:
            keys = {name: gateway.key(f"s3tests-{name}", uid=uid, gid=uid)
                    for name, uid in (("main", 0), ("alt", 1000), ("tenant", 1001))}
            yield gateway, keys


@pytest.mark.timeout(1800)  # the whole list runs as one test: minutes, more on a loaded machine
def test_allow_listed_s3tests_pass(s3tests_gateway, tmp_path):
    names = allow_listed()
    assert len(names) == len(set(names)), "a test is on the allow-list twice"
    started = time.monotonic()
    outcomes = run_s3tests(*s3tests_gateway, tmp_path, names)
    took_s = time.monotonic() - started
    not_passed = {name: outcomes.get(name, ("not run", "")) for name in names
                  if outcomes.get(name, ("not run", ""))[0] != "passed"}
    functions = len({name.split("[")[0] for name in names})  # a parametrized test is one function, several tests
    print(f"s3-tests: {len(names) - len(not_passed)} of {len(names)} allow-listed tests ({functions} test functions) "
          f"passed in {took_s:.0f} s")
    assert not not_passed, f"allow-listed s3-tests that did not pass: {not_passed}"


@pytest.mark.long
@pytest.mark.timeout(3600)
def test_whole_s3tests_file(s3tests_gateway, tmp_path):
    """Every test of test_s3.py against the gateway (about 15 minutes): no allow-listed one fails
    among the others, and the counts of each outcome are printed. S3TESTS_WHOLE_FILE=PATH also
    writes each test's outcome there (name, outcome, message), to pick the allow-list from."""
    started = time.monotonic()
    outcomes = run_s3tests(*s3tests_gateway, tmp_path, None)
    Path(os.environ.get("S3TESTS_WHOLE_FILE") or tmp_path / "outcomes.tsv").write_text(
        "".join(f"{name}\t{outcome}\t{message}\n" for name, (outcome, message) in outcomes.items()))
    kinds = [outcome for outcome, _ in outcomes.values()]
    counts = {outcome: kinds.count(outcome) for outcome in sorted(set(kinds))}
    print(f"s3-tests, the whole file: {counts} in {time.monotonic() - started:.0f} s")
    allowed_but_not_passed = {name: outcomes.get(name, ("not run", ""))[0] for name in allow_listed()
                              if outcomes.get(name, ("not run", ""))[0] != "passed"}
    assert not allowed_but_not_passed, allowed_but_not_passed
