import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
FIXTURES = REPO / "tests" / "fixtures"


def stage(workdir: Path, *args: str, check: bool = True, **env_vars: str) -> subprocess.CompletedProcess:
    """Run ``python -m stages.<args>`` in ``workdir`` as DVC would."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env_vars)
    result = subprocess.run([sys.executable, "-m", *args], cwd=workdir, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stderr}")
    return result


@pytest.fixture
def write_params(tmp_path):
    """Write a params file with the given sources (and other sections) into tmp_path."""

    def write(sources: dict, **sections) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump({"sources": sources, **sections}))
        return path

    return write
