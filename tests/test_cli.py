"""The `twlv` dispatcher."""

import subprocess
import sys

from twlv_jax import cli


def test_help_lists_verbs(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in cli.VERBS:
        assert f"  {verb}" in out


def test_unknown_verb_prints_the_list(capsys):
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown verb 'trian'" in err and "train" in err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "twlv_jax", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: twlv <verb>")
