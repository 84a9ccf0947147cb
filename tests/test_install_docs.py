"""Issue 12, item 12: the install instructions match the torch pin and say how to get CPU torch."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _torch_pin():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("torch")]
    return pin.split("==")[1]


def _installation_section():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^### Installation\n(.*?)(?=^##)", text, flags=re.M | re.S)
    assert m, "README has an Installation section"
    return m.group(1)


def test_readme_tells_pip_users_how_to_get_the_cpu_wheel_of_the_pinned_torch():
    pin = _torch_pin()
    section = _installation_section()
    assert f"pip install torch=={pin} --index-url https://download.pytorch.org/whl/cpu" in section
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in section
    assert f"{pin}+cpu" in section  # the CPU build satisfies the pin
    assert f"torch=={pin}" in (ROOT / "Makefile").read_text()  # make installs the same pin


def test_pyproject_does_not_claim_the_pin_selects_a_cpu_wheel():
    text = (ROOT / "pyproject.toml").read_text()
    comment = text[: text.index('"torch==')].rsplit("dependencies = [", 1)[1]
    assert "does not select a CPU build" in comment
    assert "download.pytorch.org/whl/cpu" in comment
