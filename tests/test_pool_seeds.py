"""benchmarks/pool_seeds.py: reports of disjoint seeds pooled equal the statistics of all seeds."""

import numpy as np
import pytest

from benchmarks import pool_seeds


def _report(seeds, values, curve):
  """A trainable_table-style report of per-seed ``values`` ``{row: [[per length] per seed]}``."""
  cell = lambda v: (f"{np.mean(v):.4f}" + (f" ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else ""))
  lines = [f"mAP@1000 on the test queries, seeds {list(seeds)} (mean ± sample std); `cmd`", "",
           "| row | 16 bits | 32 bits |", "|---|---|---|"]
  lines += [f"| {row} | " + " | ".join(cell([s[i] for s in v]) for i in range(2)) + " |"
            for row, v in values.items()]
  lines += ["", "Paired per-seed differences (NSH - other), per length:",
            "- vs other: " + "; ".join(f"{b} bits " + " ".join(
                f"{a[i] - c[i]:+.4f}" for a, c in zip(values["nsh"], values["other"]))
                for i, b in enumerate((16, 32)))]
  lines += ["", "| method | step | 16 bits | 32 bits |", "|---|---|---|---|",
            f"| nsh | 200 | {curve[0]:.4f} | {curve[1]:.4f} |", "",
            "| run | val | steps/s |", "|---|---|---|", "| nsh_s0 | 0.5 | 1.0 |"]
  return "\n".join(lines)


def test_pooled_reports_equal_the_statistics_of_all_seeds(tmp_path):
  rng = np.random.default_rng(0)
  per_seed = {row: rng.uniform(0.5, 0.7, (5, 2)).round(4) for row in ("nsh", "other")}
  a = _report([0, 1], {r: v[:2] for r, v in per_seed.items()}, (0.6, 0.5))
  b = _report([2, 3, 4], {r: v[2:] for r, v in per_seed.items()}, (0.7, 0.4))
  # a row that only one report holds is pooled over its seeds alone
  b = b.replace("| other |", "| only b | 0.5000 ± 0.0100 | 0.6000 ± 0.0000 |\n| other |", 1)
  text = pool_seeds.pool([pool_seeds.parse(a), pool_seeds.parse(b)], ["a", "b"])
  rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines()
          if line.startswith("| ") and "±" in line}
  for row, v in per_seed.items():
    assert rows[row][0].strip() == "5"
    for i in range(2):
      mean, std = (float(x) for x in rows[row][1 + i].split("±"))
      # up to the reports' 4-decimal rounding
      assert mean == pytest.approx(v[:, i].mean(), abs=2e-4)
      assert std == pytest.approx(v[:, i].std(ddof=1), abs=3e-4)
  assert rows["only b"][0].strip() == "3" and rows["only b"][1].strip() == "0.5000 ± 0.0100"
  diffs = per_seed["nsh"] - per_seed["other"]
  line = next(x for x in text.splitlines() if x.startswith("- vs other (seeds [0, 1, 2, 3, 4])"))
  got = [float(d) for d in line.split("16 bits ")[1].split(";")[0].split()]
  np.testing.assert_allclose(got, diffs[:, 0], atol=1e-4)
  curve = next(x for x in text.splitlines() if x.startswith("| nsh | 200 |"))
  assert [float(c) for c in curve.strip("|").split("|")[2:]] == [5.0, pytest.approx(0.66),
                                                               pytest.approx(0.44)]


def test_reports_sharing_a_seed_are_refused():
  r = pool_seeds.parse(_report([0], {"nsh": [[0.5, 0.6]], "other": [[0.4, 0.5]]}, (0.5, 0.5)))
  with pytest.raises(SystemExit, match="share seeds"):
    pool_seeds.pool([r, r], ["a", "a"])
