"""The README's code runs: every Python block, and its cheap shell commands, as a user would type them."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDER = re.compile(r"[\[\]|]|\.\.\.|\b(?:DIR|RUN_DIR|W|N|PATH)\b")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def cheap_commands() -> list[str]:
    """Indented README lines that run `vggnet summary` or `vggnet cache` without placeholders."""
    lines = [line.strip() for line in README.read_text().splitlines() if line.startswith("    vggnet ")]
    return [line.split("  #")[0].strip() for line in lines
            if line.split()[1] in ("summary", "cache") and not PLACEHOLDER.search(line.split("  #")[0])]


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg").is_dir(), reason="needs ../shared/data/cifar10-jpeg")
def test_python_blocks_run_in_order(tmp_path):
    """As a reader follows the README: each block in turn, in one project folder where
    ../shared/data is the shared data and photo.jpg a photograph."""
    work = tmp_path / "project"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    photo = sorted((SHARED_DATA / "imagenet-sample").iterdir())[0] if (SHARED_DATA / "imagenet-sample").is_dir() \
        else next((SHARED_DATA / "cifar10-jpeg" / "test" / "cat").iterdir())
    shutil.copy(photo, work / "photo.jpg")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    for index, block in enumerate(python_blocks()):
        done = subprocess.run([sys.executable, "-c", block], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"block {index + 1}:\n{block}\n{done.stderr[-3000:]}"


def test_the_readme_has_python_blocks_and_cheap_commands():
    assert len(python_blocks()) >= 3 and len(cheap_commands()) >= 2


@pytest.mark.parametrize("command", cheap_commands())
def test_cheap_command_runs(command, tmp_path):
    args = shlex.split(command)
    done = subprocess.run([sys.executable, "-m", "vggnet", *args[1:]], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-2000:]
