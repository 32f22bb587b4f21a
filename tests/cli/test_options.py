"""The shared CLI vocabulary: one size syntax, --out/-o, --json [FILE], -v/-q on every command."""
import click
import pytest

from pid_trt.cli.options import SIZE


@pytest.mark.parametrize("text, size", [("4096x3072", (4096, 3072)), ("4096×3072", (4096, 3072)),
                                        (" 2048 X 1024 ", (2048, 1024)), ("2048,1024", (2048, 1024)),
                                        ("2048", (2048, 2048))])
def test_size_forms(text, size):
    assert SIZE.convert(text, None, None) == size


@pytest.mark.parametrize("text", ["4096x", "x3072", "4096x3072x2", "-64x64", "0x64", "64x0", "4k", ""])
def test_bad_sizes_are_one_line(text):
    with pytest.raises(click.BadParameter, match="WIDTHxHEIGHT") as e:
        SIZE.convert(text, None, None)
    assert "\n" not in str(e.value)
