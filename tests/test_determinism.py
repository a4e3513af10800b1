"""Determinism on CPU: the same command and seed give identical results.json
(all but the wall-time fields), history and gradient norms.

Each command runs twice in this process (the second run reuses compiled
functions and caches, so state leaking from one run into the next would
show). That two *processes* agree exactly is shown by tests/test_resume.py:
its resumed run, another process, equals the uninterrupted run of this
process bit for bit.
"""

import json

import numpy as np

from experiments import text
from experiments import timeseries

WALL_TIME = ("train_time_s", "sample_time_s")

TIMESERIES = ["--window", "6", "--hidden", "4", "--batch_size", "64",
              "--epochs", "2", "--grad_every_n_batches", "2", "--verbose", "0",
              "--seed", "5"]
TEXT = ["--seq_len", "12", "--hidden", "8", "--embed_dim", "4",
        "--batch_size", "8", "--epochs", "2", "--steps_per_epoch", "3",
        "--sample_length", "8", "--grad_every_n_batches", "2",
        "--sample_prompt", "the", "--verbose", "0", "--seed", "5"]


def _assert_identical_runs(first, second):
    a = json.loads((first / "results.json").read_text())
    b = json.loads((second / "results.json").read_text())
    assert a["status"] == b["status"] == "ok"
    for key in WALL_TIME:
        a.pop(key, None), b.pop(key, None)
    assert a == b
    for name in ("history.json", "logs/gradient_norms.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    with np.load(first / "logs/gradient_norms.npz") as x, np.load(
        second / "logs/gradient_norms.npz"
    ) as y:
        assert x.files == y.files
        for key in x.files:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_timeseries_same_seed_same_results(tmp_path):
    def run(args, name):
        workdir, _ = timeseries.main(
            args + ["--workdir_root", str(tmp_path), "--run_name", name])
        return workdir

    first, second = run(TIMESERIES, "first"), run(TIMESERIES, "second")
    _assert_identical_runs(first, second)


def test_text_same_seed_same_results(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "".join(f"the cat sat on the mat {i % 9}, then ran.\n" for i in range(80)),
        encoding="utf-8",
    )
    args = TEXT + ["--text_file", str(corpus), "--workdir_root", str(tmp_path)]
    first, _ = text.main(args + ["--run_name", "first"])
    second, _ = text.main(args + ["--run_name", "second"])
    _assert_identical_runs(first, second)
    sample = json.loads((first / "results.json").read_text())["sample"]["text"]
    assert sample.startswith("the") and len(sample) == len("the") + 8
