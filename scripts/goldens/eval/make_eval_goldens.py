"""Golden files for agora-eval: Krippendorff's alpha, Student-t quantiles and summaries.

Run from the repository root (no network beyond installing the pinned packages once):

    python3 -m venv /tmp/venv-eval
    /tmp/venv-eval/bin/pip install -r scripts/goldens/eval/requirements.txt
    /tmp/venv-eval/bin/python scripts/goldens/eval/make_eval_goldens.py

Pinned (requirements.txt beside this file): krippendorff 0.9.0, numpy 2.4.6, scipy 1.17.1.

It writes, under crates/agora-eval/test_data/:

- alpha.json: reliability matrices (coders x units, null = missing) with the alpha the
  `krippendorff` package computes for them at each level of measurement, plus the number of
  pairable units and pairable values. The first cases are Krippendorff's own worked example
  ("Computing Krippendorff's Alpha-Reliability", 2011: 4 coders x 12 units, missing data;
  nominal 0.743, ordinal 0.815, interval 0.849, ratio 0.797), as numbers and as labels;
  the rest are seeded random matrices (rating scales, binary labels, continuous values).
- t_quantiles.json: scipy.stats.t.ppf(p, df) for df 1..200 (and a few fractional and large
  df) at the probabilities a one-sided or a two-sided 90/95/99% interval needs.
- summaries.json: mean, sample standard deviation, standard error and the Student-t
  interval (scipy.stats.t.interval) of a few samples.
"""

import json
import math
from importlib.metadata import version
from pathlib import Path

import krippendorff
import numpy as np
import scipy
import scipy.stats

OUT = Path(__file__).resolve().parents[3] / "crates/agora-eval/test_data"
LEVELS = ["nominal", "ordinal", "interval", "ratio"]

# Krippendorff (2011), section C: 4 coders (rows) x 12 units (columns); None = missing.
PAPER_MATRIX = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
PAPER_LABELS = {1: "very low", 2: "low", 3: "mid", 4: "high", 5: "very high"}


def pairable_counts(matrix):
    """Pairable units (at least two values) and the number of values in them."""
    units = 0
    values = 0
    for column in zip(*matrix):
        present = [v for v in column if v is not None]
        if len(present) >= 2:
            units += 1
            values += len(present)
    return units, values


def numeric_alpha(matrix, level):
    data = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix])
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


def label_alpha(matrix):
    # The package reads the string "nan" as missing in a string matrix.
    data = np.array([["nan" if v is None else v for v in row] for row in matrix])
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


def numeric_case(name, matrix):
    units, values = pairable_counts(matrix)
    return {
        "name": name,
        "reliability_data": matrix,
        "pairable_units": units,
        "pairable_values": values,
        "alpha": {level: numeric_alpha(matrix, level) for level in LEVELS},
    }


def random_matrix(rng, coders, units, missing, draw):
    matrix = []
    for _ in range(coders):
        row = []
        for _ in range(units):
            row.append(None if rng.random() < missing else draw())
        matrix.append(row)
    return matrix


def alpha_cases():
    rng = np.random.default_rng(20240605)
    cases = [numeric_case("krippendorff_2011_example", PAPER_MATRIX)]

    # Rating scale 1..5 where coders mostly agree: a latent score per unit plus noise.
    latent = rng.integers(1, 6, size=25)
    matrix = []
    for _ in range(5):
        row = []
        for u in range(25):
            if rng.random() < 0.25:
                row.append(None)
            else:
                row.append(int(min(5, max(1, latent[u] + rng.choice([-1, 0, 0, 0, 1])))))
        matrix.append(row)
    cases.append(numeric_case("likert_1_5_five_coders_missing", matrix))

    # Pure noise on a 1..7 scale: alpha near zero, possibly negative.
    cases.append(
        numeric_case(
            "likert_1_7_noise",
            random_matrix(rng, 3, 30, 0.1, lambda: int(rng.integers(1, 8))),
        )
    )

    # Binary labels with two coders and no missing data.
    cases.append(
        numeric_case("binary_two_coders", random_matrix(rng, 2, 40, 0.0, lambda: int(rng.random() < 0.3)))
    )

    # Continuous positive measurements (two decimals) with missing values; some units end up
    # with a single value and are not pairable.
    latent = rng.uniform(0.5, 10.0, size=18)
    matrix = []
    for _ in range(4):
        row = []
        for u in range(18):
            if rng.random() < 0.4:
                row.append(None)
            else:
                row.append(round(float(latent[u] + rng.normal(0.0, 0.8)), 2) if latent[u] > 1.5 else 0.0)
        matrix.append(row)
    cases.append(numeric_case("continuous_four_coders_missing", matrix))

    # Sparse design: many coders, each unit seen by few of them.
    cases.append(
        numeric_case(
            "sparse_eight_coders",
            random_matrix(rng, 8, 15, 0.7, lambda: int(rng.integers(0, 4))),
        )
    )

    label_cases = [
        {
            "name": "krippendorff_2011_example_labels",
            "reliability_data": [[None if v is None else PAPER_LABELS[v] for v in row] for row in PAPER_MATRIX],
        },
        {
            "name": "random_labels",
            "reliability_data": random_matrix(
                rng, 3, 20, 0.2, lambda: str(rng.choice(["toxic", "neutral", "supportive", "off topic"]))
            ),
        },
    ]
    for case in label_cases:
        units, values = pairable_counts(case["reliability_data"])
        case["pairable_units"] = units
        case["pairable_values"] = values
        case["alpha"] = label_alpha(case["reliability_data"])
    return {"numeric": cases, "labels": label_cases}


PROBABILITIES = [0.9, 0.95, 0.975, 0.99, 0.995]


def t_quantiles():
    dfs = [float(df) for df in range(1, 201)] + [0.5, 1.5, 2.5, 7.25, 350.0, 1000.0, 1e5]
    return {
        "probabilities": PROBABILITIES,
        "rows": [
            {"df": df, "quantiles": [float(scipy.stats.t.ppf(p, df)) for p in PROBABILITIES]} for df in dfs
        ],
    }


def summary_case(name, values, confidence):
    values = [float(v) for v in values]
    n = len(values)
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1))
    sem = float(scipy.stats.sem(values))
    low, high = scipy.stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return {
        "name": name,
        "values": values,
        "confidence": confidence,
        "n": n,
        "mean": mean,
        "sd": sd,
        "sem": sem,
        "ci_low": float(low),
        "ci_high": float(high),
    }


def summaries():
    rng = np.random.default_rng(7)
    return [
        summary_case("two_values", [1.0, 2.0], 0.95),
        summary_case("likert_scores", [int(v) for v in rng.integers(1, 8, size=37)], 0.95),
        summary_case("normal_sample_90", [round(float(v), 6) for v in rng.normal(3.5, 1.2, size=120)], 0.9),
        summary_case("normal_sample_99", [round(float(v), 6) for v in rng.normal(-2.0, 0.3, size=11)], 0.99),
        summary_case("large_offset", [1e6 + v for v in [0.25, 0.5, 0.125, 0.75, 1.0]], 0.95),
    ]


def write(name, data):
    path = OUT / name
    path.write_text(json.dumps(data, indent=1) + "\n")
    print("wrote", path)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    print("versions:", {name: version(name) for name in ["krippendorff", "numpy", "scipy"]})
    write("alpha.json", alpha_cases())
    write("t_quantiles.json", t_quantiles())
    write("summaries.json", summaries())
    paper = numeric_alpha(PAPER_MATRIX, "nominal")
    print("paper example:", {level: round(numeric_alpha(PAPER_MATRIX, level), 3) for level in LEVELS})
    assert math.isclose(paper, 0.743, abs_tol=5e-4)


if __name__ == "__main__":
    main()
