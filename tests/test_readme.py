"""The README's Python examples run as written, and the CLI commands it shows exist (docs never go stale)."""
import pathlib
import re

import pytest
from click.testing import CliRunner

from pid_trt.cli import _register, cli

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize("block", re.findall(r"```python\n(.*?)```", README, re.S))
def test_python_blocks_run(block):
    exec(compile(block, "README.md", "exec"), {})


def test_cli_commands_in_readme_exist():
    _register()
    shown = set(re.findall(r"^pid-trt ([\w-]+)", README, re.M)) | set(re.findall(r"-m pid_trt ([\w-]+)", README))
    assert shown and shown <= set(cli.commands), shown - set(cli.commands)
    for name in shown:
        assert CliRunner().invoke(cli, [name, "--help"]).exit_code == 0


def test_two_commands_exist():
    root = pathlib.Path(__file__).parent.parent
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"bash {script}" in README and (root / script).is_file()
    assert "scripts/test.sh" in (root / ".ci" / "run").read_text()
