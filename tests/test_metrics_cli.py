"""``dapkernels shift``: end to end on temporary files (block / linear, PAD, CORAL) and every
input error as one line with exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dapkernels as dk
from dapkernels.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    src = rng.normal(size=(600, 6)).astype(np.float32)
    tgt = (rng.normal(size=(500, 6)) * 1.3 + 0.4).astype(np.float32)
    np.save(tmp_path / "s.npy", src)
    np.save(tmp_path / "t.npy", tgt)
    return tmp_path, src, tgt


def test_end_to_end_block_linear_pad_coral(files, capsys):
    tmp, src, tgt = files
    out = tmp / "out"
    rc = main(["shift", str(tmp / "s.npy"), str(tmp / "t.npy"), "--method", "block", "linear",
               "--out", str(out), "--seed", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    for word in ("block", "linear", "proxy A-distance", "CORAL distance", "p-value", "time s"):
        assert word in printed
    payload = json.loads((out / "shift.json").read_text())
    assert {"source", "target", "num_source", "num_target", "dim", "tests", "pad",
            "domain_shift", "runtime_s", "machine"} <= payload.keys()
    assert payload["num_source"] == 600 and payload["num_target"] == 500 and payload["dim"] == 6
    x, y = torch.from_numpy(src), torch.from_numpy(tgt)
    block = dk.metrics.block_mmd_test(x, y)
    assert payload["tests"]["block"]["statistic"] == pytest.approx(block.statistic, rel=1e-12)
    assert payload["tests"]["block"]["p_value"] == pytest.approx(block.p_value, rel=1e-9)
    lin = dk.metrics.linear_mmd_test(x, y)
    assert payload["tests"]["linear"]["statistic"] == pytest.approx(lin.statistic, rel=1e-12)
    assert payload["domain_shift"]["coral"] == pytest.approx(
        float(dk.coral(x.double(), y.double())), rel=1e-9)
    pad = dk.metrics.proxy_a_distance(x, y, generator=torch.Generator().manual_seed(3))
    assert {"value", "ci_low", "ci_high", "error"} <= payload["pad"].keys()
    assert payload["pad"]["value"] > 0.5  # scaled + shifted: clearly separable in part
    assert 0.0 <= payload["pad"]["ci_low"] <= payload["pad"]["value"] <= payload["pad"]["ci_high"]
    assert pad.num_test == payload["pad"]["num_test"]
    assert (out / "shift.png").read_bytes()[:8] == PNG_MAGIC


def test_resampling_methods_match_mmd_test(files, capsys):
    """permutation / wild / aggregated through the command equal mmd_test with the same seed."""
    tmp, src, tgt = files
    out = tmp / "out"
    np.save(tmp / "t_eq.npy", np.concatenate([tgt, tgt[:100]]))  # n = m for "wild"
    rc = main(["shift", str(tmp / "s.npy"), str(tmp / "t_eq.npy"), "--method", "permutation",
               "wild", "aggregated", "--permutations", "60", "--out", str(out), "--seed", "5"])
    assert rc == 0
    payload = json.loads((out / "shift.json").read_text())
    x = torch.from_numpy(src)
    y = torch.from_numpy(np.load(tmp / "t_eq.npy"))
    for method in ("permutation", "wild", "aggregated"):
        ref = dk.metrics.mmd_test(x, y, method=method, num_permutations=60,
                                  generator=torch.Generator().manual_seed(5))
        got = payload["tests"][method]
        assert got["p_value"] == ref.p_value and got["reject"] == ref.reject, method
        assert got["statistic"] == pytest.approx(ref.statistic, rel=1e-12)
    assert len(payload["tests"]["aggregated"]["per_kernel"]) == 10
    assert (out / "shift.png").read_bytes()[:8] == PNG_MAGIC


def test_npz_and_pt_inputs(files, capsys):
    tmp, src, tgt = files
    np.savez(tmp / "both.npz", source=src, target=tgt)
    torch.save(torch.from_numpy(tgt).reshape(500, 2, 3), tmp / "t.pt")
    rc = main(["shift", f"{tmp / 'both.npz'}:source", str(tmp / "t.pt"), "--method", "block",
               "--no-pad", "--out", str(tmp / "o")])
    assert rc == 0
    payload = json.loads((tmp / "o" / "shift.json").read_text())
    assert payload["dim"] == 6 and "pad" not in payload
    ref = dk.metrics.block_mmd_test(torch.from_numpy(src), torch.from_numpy(tgt))
    assert payload["tests"]["block"]["statistic"] == pytest.approx(ref.statistic, rel=1e-12)


def _error(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dapkernels shift: error: ")
    return err


def test_error_missing_file(files, capsys):
    tmp, _, _ = files
    err = _error(["shift", str(tmp / "nope.npy"), str(tmp / "t.npy"), "--method", "block"],
                 capsys)
    assert "SOURCE" in err and "nope.npy" in err and "no such file" in err


def test_error_mismatched_widths(files, capsys):
    tmp, _, _ = files
    np.save(tmp / "w.npy", np.zeros((50, 4), dtype=np.float32))
    err = _error(["shift", str(tmp / "s.npy"), str(tmp / "w.npy"), "--method", "block"], capsys)
    assert "TARGET" in err and "w.npy" in err and "4 features" in err and "has 6" in err


def test_error_non_finite_rows(files, capsys):
    tmp, src, _ = files
    bad = src.copy()
    bad[[7, 9], 1] = np.nan
    bad[20, 0] = np.inf
    np.save(tmp / "bad.npy", bad)
    err = _error(["shift", str(tmp / "s.npy"), str(tmp / "bad.npy"), "--method", "linear"],
                 capsys)
    assert "TARGET" in err and "bad.npy" in err and "3 row(s) contain NaN or Inf (first: row 7)" \
        in err


def test_error_too_few_samples(files, capsys):
    tmp, src, _ = files
    np.save(tmp / "few.npy", src[:3])
    err = _error(["shift", str(tmp / "few.npy"), str(tmp / "t.npy"), "--method", "block"], capsys)
    assert "SOURCE" in err and "few.npy" in err and "3 rows, need at least 4" in err


def test_error_unreadable_and_unsupported(files, capsys):
    tmp, src, _ = files
    (tmp / "junk.npy").write_bytes(b"not an array")
    err = _error(["shift", str(tmp / "junk.npy"), str(tmp / "t.npy")], capsys)
    assert "junk.npy" in err and "cannot read" in err
    (tmp / "f.csv").write_text("1,2\n")
    err = _error(["shift", str(tmp / "s.npy"), str(tmp / "f.csv")], capsys)
    assert "f.csv" in err and "unsupported file type" in err
    np.savez(tmp / "two.npz", a=src, b=src)
    err = _error(["shift", str(tmp / "two.npz"), str(tmp / "t.npy")], capsys)
    assert "two.npz" in err and "FILE.npz:KEY" in err
