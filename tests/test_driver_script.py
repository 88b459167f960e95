"""A driver script run as ``python script.py`` from a folder that workers
cannot import: its functions and classes (in ``__main__``) travel by value."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import orion

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    @orion.remote
    def norm2(p):
        return p.x * p.x + p.y * p.y

    @orion.remote
    def total(*values):
        return sum(values)

    with orion.init(transport=TRANSPORT, num_workers=2):
        refs = [norm2.remote(Point(i, i + 1)) for i in range(20)]
        print("answer", orion.get(total.remote(*refs)))
""")


@pytest.mark.parametrize("transport", ["inproc", "zmq"])
@pytest.mark.timeout(60)
def test_functions_and_classes_of_a_main_script(tmp_path, transport):
    script = tmp_path / "driver.py"
    script.write_text(SCRIPT.replace("TRANSPORT", repr(transport)))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=50)
    assert done.returncode == 0, done.stderr
    expected = sum(i * i + (i + 1) * (i + 1) for i in range(20))
    assert f"answer {expected}" in done.stdout
