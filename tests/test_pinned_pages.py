"""The metaserver's database pages are locked in memory, following the file as it grows."""

from pathlib import Path

from chunkfs.metaserver.pinned_pages import GROWTH_STEP_BYTES, PAGE, PinnedPages


def locked_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmLck in /proc/self/status")


def test_pins_the_file_and_each_new_tail(tmp_path: Path) -> None:
    data = tmp_path / "data.mdb"
    data.write_bytes(b"x" * (10 * PAGE + 100))
    before = locked_bytes()
    pins = PinnedPages(data)
    try:
        pins.pin_to_end()
        assert pins.pinned_bytes == 10 * PAGE  # whole pages only
        assert locked_bytes() - before == 10 * PAGE
        with data.open("ab") as f:
            f.write(b"y" * GROWTH_STEP_BYTES)
        pins.pin_to_end()
        assert pins.pinned_bytes == (10 * PAGE + 100 + GROWTH_STEP_BYTES) // PAGE * PAGE
        assert locked_bytes() - before == pins.pinned_bytes
        assert not pins.failed
    finally:
        pins.stop()
    assert locked_bytes() == before
