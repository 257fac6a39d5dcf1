"""The web file manager in a real browser: Playwright driving Debian's headless Chromium against
the gateway `chunkfs up` starts. Log in, upload a 30 MiB file (the progress bar moves), cut the
upload, close the tab and drop the file again (it resumes where the server is), download it,
share it, open the link in a fresh browser context, revoke it and see the 410 page, log out.
Screenshots go to test-output/web-*.png. The page's Content-Security-Policy forbids eval, so
the test waits with selectors and locators (which run in Playwright's own world), never with
script strings evaluated in the page."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import CHUNKFS, IN_CI, _cluster, wait_until

MiB = 1 << 20
PASSWORD = "carol-password-9"
SHOTS = Path(__file__).parent.parent / "test-output"

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect


@pytest.fixture(scope="module")
def web_cluster(tmp_path_factory):
    yield from _cluster(tmp_path_factory, gateway=True)


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("chromium is not installed") if IN_CI else pytest.skip("chromium is not installed")
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"web-{name}.png"), full_page=True)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_the_file_manager_in_a_browser(web_cluster, browser, tmp_path):
    added = subprocess.run([*CHUNKFS, "user", "add", "carol", "--password-stdin", "--dir", str(web_cluster.dir),
                            "--json"], input=PASSWORD + "\n", capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    carol = json.loads(added.stdout)
    site = f"http://127.0.0.1:{web_cluster.port + 61}"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(30 * MiB))

    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.goto(site + "/")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#login-name", "carol")
    page.fill("#login-password", "not-the-password")
    page.click("#login-button")
    expect(page.locator("#login-error")).to_contain_text("wrong")
    page.fill("#login-password", PASSWORD)
    shot(page, "login")
    page.click("#login-button")
    page.wait_for_selector("#app:not([hidden])")
    assert page.text_content("#who").startswith("carol")

    # the upload, cut after a few pieces: the server keeps what arrived
    patches: list[str] = []

    def cut_after_four(route):
        if route.request.method == "PATCH":
            patches.append(route.request.url)
            if len(patches) > 4:
                route.abort()
                return
        route.continue_()

    page.route("**/api/v1/uploads/**", cut_after_four)
    page.set_input_files("#picker", str(big))
    page.wait_for_selector("#uploads li[data-name='big.bin'] .error")
    bar = page.locator("#uploads li[data-name='big.bin'] progress")
    progress = [float(bar.get_attribute("value") or 0), float(bar.get_attribute("max") or 0)]
    assert 0 < progress[0] < progress[1], progress  # the bar moved, and stopped short
    shot(page, "upload-cut")
    page.unroute("**/api/v1/uploads/**")
    page.close()

    # a new tab of the same browser: the same file again resumes from the server's offset
    page = context.new_page()
    page.goto(site + "/")
    page.wait_for_selector("#app:not([hidden])")
    page.set_input_files("#picker", str(big))
    row = "#uploads li[data-name='big.bin']"
    page.wait_for_selector(f"{row}[data-done='1']", timeout=300_000)
    resumed_from = int(page.get_attribute(row, "data-resumed-from") or 0)
    assert resumed_from >= 4 * 2 * MiB, resumed_from  # the four pieces that got through were not sent again
    on_mount = web_cluster.mnt / "home/carol/big.bin"
    wait_until(on_mount.exists, 30, "the upload shows on the mount")
    assert md5(on_mount) == md5(big)
    st = os.stat(on_mount)
    assert (st.st_uid, st.st_gid) == (carol["uid"], carol["gid"])
    page.wait_for_selector("#files tr[data-name='big.bin']")
    assert "carol" in page.text_content("#files tr[data-name='big.bin']")  # the owner column
    expect(page.locator("#usage")).to_contain_text("30.0 MiB in 1 files")
    shot(page, "listing")

    # download
    with page.expect_download() as download:
        page.click("#files tr[data-name='big.bin'] a")
    saved = tmp_path / "downloaded.bin"
    download.value.save_as(str(saved))
    assert md5(saved) == md5(big)

    # mkdir and rename through the page's prompts
    page.once("dialog", lambda dialog: dialog.accept("holidays"))
    page.click("#mkdir")
    page.wait_for_selector("#files tr[data-name='holidays']")
    assert (web_cluster.mnt / "home/carol/holidays").is_dir()

    # share with a 1-minute link and copy it
    page.click("#files tr[data-name='big.bin'] button[title='Share']")
    page.select_option("#share-expiry", "60")
    page.click("#share-create")
    page.wait_for_selector("#share-result:not([hidden])")
    url = page.input_value("#share-url")
    assert url.startswith(f"{site}/s/")
    shot(page, "share")
    page.click("#share-close")

    # the link in a fresh context: no login, no cookies
    stranger = browser.new_context(accept_downloads=True)
    link_page = stranger.new_page()
    with link_page.expect_download() as shared, contextlib.suppress(playwright_api.Error):
        link_page.goto(url)  # a download ends the navigation with an error
    fetched = tmp_path / "shared.bin"
    shared.value.save_as(str(fetched))
    assert md5(fetched) == md5(big)
    link_page.close()
    assert httpx.head(url).status_code == 200

    # revoke it on the page: the link answers 410 with a page that says so
    page.click("#shares tr button:has-text('Revoke')")
    expect(page.locator("#shares tbody")).to_contain_text("revoked")
    link_page = stranger.new_page()
    answer = link_page.goto(url)
    assert answer is not None and answer.status == 410
    assert "revoked" in link_page.text_content("h1")
    shot(link_page, "revoked-link")
    stranger.close()

    # log out: the page asks for a login again, and the session's cookie no longer works
    access_cookie = next(c["value"] for c in context.cookies() if c["name"] == "chunkfs_access")
    assert httpx.get(f"{site}/api/v1/auth/me", cookies={"chunkfs_access": access_cookie}).status_code == 200
    page.click("#logout")
    page.wait_for_selector("#login:not([hidden])")
    shot(page, "logged-out")
    assert httpx.get(f"{site}/api/v1/auth/me", cookies={"chunkfs_access": access_cookie}).status_code == 401
    context.close()
