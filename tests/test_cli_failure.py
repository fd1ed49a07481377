"""`rnnsym derive` exits 1 when a check fails: a kernel with a planted bug is caught."""

from __future__ import annotations

import rnnsym.kernel
from rnnsym.cli import main


def test_wrong_kernel_fails_verification(monkeypatch, capsys):
    original = rnnsym.kernel.generate_module

    def buggy(derivation):
        source = original(derivation)
        assert "carry_h = d0 @ W" in source
        # drop 1% of the recurrent term of eq. (9): far below what a glance would notice
        return source.replace("carry_h = d0 @ W", "carry_h = 0.99 * (d0 @ W)")

    monkeypatch.setattr(rnnsym.kernel, "generate_module", buggy)
    code = main(["derive", "elman", "--T", "2"])
    out = capsys.readouterr().out
    assert code == 1
    assert "CHECKS FAILED" in out
    # the derivation itself is right, so the oracle passes; the kernel's gradient of W fails
    # against the reference (and so do the adjoints the recurrence carries), U's too, V's not
    assert "— ok" in out
    rows = {
        " ".join(line.split("float64")[0].split()) + " float64": line
        for line in out.splitlines()
        if "float64" in line
    }
    assert "FAILED" in rows["gradient W float64"]
    assert "FAILED" in rows["finite differences W float64"]
    assert "FAILED" in rows["vjp h0 h float64"]
    assert "FAILED" not in rows["gradient V float64"]
    assert "FAILED" not in rows["loss float64"]
