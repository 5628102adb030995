"""multkan.set_malloc_thresholds and its use by the command line."""

import sys

import pytest

import multkan
from multkan import InvalidParameterError, allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux only")
def test_sets_thresholds_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the C library is not glibc")
    assert multkan.set_malloc_thresholds() is True
    assert multkan.set_malloc_thresholds(mmap_threshold=1 << 20, trim_threshold=1 << 24) is True


def test_other_platforms_change_nothing(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert multkan.set_malloc_thresholds() is False


@pytest.mark.parametrize("value", [0, -1, 2**31, 1.5, True, "1"])
def test_rejects_invalid_threshold(value):
    with pytest.raises(InvalidParameterError, match="invalid mmap_threshold: expected an integer number of bytes"):
        multkan.set_malloc_thresholds(mmap_threshold=value)
    with pytest.raises(InvalidParameterError, match="invalid trim_threshold"):
        multkan.set_malloc_thresholds(trim_threshold=value)


def test_cli_sets_thresholds_before_the_command(monkeypatch):
    import argparse

    from multkan import cli

    events = []
    parser = argparse.ArgumentParser()
    parser.set_defaults(handler=lambda arguments: events.append("command") or 0)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(allocator, "set_malloc_thresholds", lambda: events.append("thresholds") or True)
    assert cli.main([]) == 0
    assert events == ["thresholds", "command"]
