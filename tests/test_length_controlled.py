"""The length-controlled AlpacaEval win rate: parity with alpaca_eval's own GLM code, a brute-force reference for the
fit, recovery of a known length bias, the published leaderboard's LC numbers from the published weights, and bad
input files."""

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

from selfalign.evaluation import alpaca_eval as ae
from selfalign.evaluation import length_controlled as lcm

N = 805


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


class World:
    """Synthetic AlpacaEval: instruction difficulties, reference lengths, and a judge that follows the GLM with noise."""

    def __init__(self, seed=0, theta_len=-1.5, theta_x=0.6):
        self.rng = np.random.default_rng(seed)
        self.difficulty = self.rng.normal(0, 1, N)
        self.ref_len = self.rng.integers(300, 2500, N)
        self.theta_len, self.theta_x = theta_len, theta_x

    def outputs(self, length_factor):
        ref = ["r" * n for n in self.ref_len]
        model = ["m" * max(1, int(n * length_factor * self.rng.uniform(0.8, 1.2))) for n in self.ref_len]
        return ref, model

    def judge(self, ref, model, theta_m):
        delta = np.array([len(r) - len(m) for r, m in zip(ref, model)], float)
        std = delta / delta.std(ddof=1)
        p = _sigmoid(self.theta_len * np.tanh(std) + self.theta_x * self.difficulty + theta_m)
        # a weighted judge reports probabilities, not labels: noisy ones around the GLM's
        return np.clip(self.rng.beta(p * 6 + 1e-3, (1 - p) * 6 + 1e-3), 0.001, 0.999), std

    def true_lc(self, theta_m):
        return 100 * _sigmoid(self.theta_x * self.difficulty + theta_m).mean()

    def gamed_frame(self):
        """df_gamed.csv: the baseline's verbose and concise variants judged against it (quality = the baseline's)."""
        frames = []
        for name, factor in (("gpt4_1106_preview_verbose", 1.7), ("gpt4_1106_preview_concise", 0.45)):
            ref, model = self.outputs(factor)
            pref, std = self.judge(ref, model, 0.0)
            frames.append(pd.DataFrame({"model": name, "index": np.arange(N), "preference": pref,
                                        "std_delta_len": std, "instruction_difficulty": self.difficulty,
                                        "not_gamed_baseline": False}))
        return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def world():
    return World()


def _alpaca_eval_lc(monkeypatch, tmp_path, gamed, ref, model, pref, lam):
    from alpaca_eval.metrics import glm_winrate as glm  # a dev dependency: the parity test must run, not skip
    gamed_csv = tmp_path / "df_gamed.csv"
    gamed.to_csv(gamed_csv, index=False)
    monkeypatch.setattr(glm, "hf_hub_download", lambda **kw: str(gamed_csv))  # the hub is unreachable here
    annotations = pd.DataFrame({"output_1": ref, "output_2": model, "generator_1": "gpt4_1106_preview",
                                "generator_2": "my_model", "annotator": "weighted_alpaca_eval_gpt4_turbo",
                                "preference": np.asarray(pref) + 1})
    info = {**glm.GLM_INFO["length_controlled_v1"], "regularize_to_baseline_lambda": lam}
    return glm.get_length_controlled_winrate(annotations, save_weights_dir=None, glm_info=info,
                                             is_add_glm_preference_inplace=False)


@pytest.mark.parametrize("lam", [0.2, None], ids=["regularized", "unregularized"])
def test_parity_with_alpaca_eval(world, monkeypatch, tmp_path, lam):
    gamed = world.gamed_frame()
    ref, model = world.outputs(1.8)
    pref, _ = world.judge(ref, model, 0.3)
    theirs = _alpaca_eval_lc(monkeypatch, tmp_path, gamed, ref, model, pref, lam)

    ours = lcm.length_controlled_win_rate(list(pref), model, ref, list(range(N)),
                                          dict(enumerate(world.difficulty)), gamed.drop(columns="model"),
                                          regularize_to_baseline_lambda=lam or 0)
    assert ours["regularized_to_gamed_baselines"] is bool(lam)
    assert ours["length_controlled_win_rate"] == pytest.approx(theirs["length_controlled_winrate"], abs=1e-9)
    assert ours["lc_standard_error"] == pytest.approx(theirs["lc_standard_error"], abs=1e-9)
    raw = ae.win_rate(list(pref))
    assert raw["win_rate"] == pytest.approx(theirs["win_rate"], abs=1e-9)
    assert raw["standard_error"] == pytest.approx(theirs["standard_error"], abs=1e-9)
    assert raw["n_wins"] == theirs["n_wins"] and raw["discrete_win_rate"] == pytest.approx(theirs["discrete_win_rate"])


def test_length_bias_is_removed(world):
    """A model as good as the baseline but 1.8x as long: raw win rate inflated, LC close to the truth."""
    gamed = world.gamed_frame().drop(columns="model")
    ref, model = world.outputs(1.8)
    pref, _ = world.judge(ref, model, 0.0)
    raw = 100 * pref.mean()
    fit = lcm.length_controlled_win_rate(list(pref), model, ref, list(range(N)), dict(enumerate(world.difficulty)),
                                         gamed)
    truth = world.true_lc(0.0)
    assert raw - truth > 10, "the synthetic judge must favour length for this test to mean anything"
    assert abs(fit["length_controlled_win_rate"] - truth) < 3
    assert fit["weights"]["np.tanh(std_delta_len)"] < -0.5


def test_fit_equals_brute_force_minimizer():
    """Fixed C (no CV): liblinear's optimum of ||w||_1 + C * sum_i s_i * logloss(p_i, sigmoid(x_i . w))."""
    rng = np.random.default_rng(1)
    X = np.column_stack([np.tanh(rng.normal(size=300)), rng.normal(size=300), np.ones(300)])
    p = np.clip(_sigmoid(X @ np.array([-1.0, 0.0, 0.4])) + rng.normal(0, 0.05, 300), 0.01, 0.99)
    s = rng.uniform(0.2, 1.0, 300)
    C = 0.05  # small enough that the L1 penalty zeros the irrelevant column

    def objective(w):
        z = X @ w
        loss = p * np.logaddexp(0, -z) + (1 - p) * np.logaddexp(0, z)
        return np.abs(w).sum() + C * (s * loss).sum()

    # brute force: L1 split into positive and negative parts, smooth and bounded
    split = minimize(lambda v: objective(v[:3] - v[3:]), np.zeros(6), method="L-BFGS-B", bounds=[(0, None)] * 6,
                     options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 10_000})
    reference = split.x[:3] - split.x[3:]
    ours = lcm.fit_glm(X, p, s, n_splits=0, C=C)
    assert objective(ours) <= objective(reference) + 1e-5
    np.testing.assert_allclose(ours, reference, atol=2e-3)
    assert ours[1] == 0.0 and reference[1] == pytest.approx(0, abs=1e-6)


def test_published_weights_reproduce_the_leaderboard_lc(shared_data):
    """Published GLM weights + our prediction reproduce the leaderboard's LC win rates.

    The hub's difficulty table is not available here, so its distribution is estimated (a normal, two parameters)
    from half of the models and the other half is predicted.
    """
    base = shared_data / "alpaca_eval"
    weights = pd.read_csv(base / "lc_weights" / "weighted_alpaca_eval_gpt4_turbo_baseline_gpt4_1106_preview.csv",
                          index_col=0)
    board = pd.read_csv(base / "leaderboards" / "AlpacaEval_2_weighted_alpaca_eval_gpt4_turbo_leaderboard.csv",
                        index_col=0)
    both = weights.join(board, how="inner").dropna(subset=["length_controlled_winrate"])
    assert len(both) > 150
    quantiles = (np.arange(N) + 0.5) / N
    from scipy.stats import norm

    def predicted_lc(params, rows, columns=lcm.FEATURES):
        difficulty = params[0] + abs(params[1]) * norm.ppf(quantiles)
        features = lcm.design_matrix(np.zeros(N), difficulty, np.ones(N))
        return np.array([100 * lcm.predict_preferences(rows.loc[m, list(columns)].to_numpy(float), features).mean()
                         for m in rows.index])

    fit_rows, test_rows = both.iloc[::2], both.iloc[1::2]
    loss = lambda params: ((predicted_lc(params, fit_rows) - fit_rows["length_controlled_winrate"]) ** 2).mean()
    params = minimize(loss, [0.0, 1.0], method="Nelder-Mead").x
    error = np.abs(predicted_lc(params, test_rows) - test_rows["length_controlled_winrate"])
    assert np.median(error) < 0.5 and error.max() < 2.0
    swapped = (lcm.FEATURES[0], lcm.FEATURES[2], lcm.FEATURES[1])  # difficulty and model weight confused
    assert np.median(np.abs(predicted_lc(params, test_rows, swapped) - test_rows["length_controlled_winrate"])) > 10
    # the baseline against itself is 50 by construction
    assert predicted_lc(params, both.loc[["gpt4_1106_preview"]])[0] == pytest.approx(50.0)


def test_bad_difficulty_and_gamed_files(tmp_path):
    table = tmp_path / "instruction_difficulty.csv"
    table.write_text("index,instruction_difficulty\n0,0.5\n1,-0.2\n2,abc\n")
    with pytest.raises(lcm.LengthControlDataError, match=r"instruction_difficulty.csv:4: field 'instruction_difficulty'"):
        lcm.load_instruction_difficulty(table)
    table.write_text("index,instruction_difficulty\n0,0.5\n1,-0.2\n")
    assert lcm.load_instruction_difficulty(table) == {0: 0.5, 1: -0.2}
    with pytest.raises(lcm.LengthControlDataError, match=r"index\(es\) \[2\]"):
        lcm.length_controlled_win_rate([0.5] * 3, ["a", "bb", "c"], ["aa", "b", "cc"], [0, 1, 2], {0: 0.5, 1: -0.2})
    with pytest.raises(lcm.LengthControlDataError, match="not found"):
        lcm.load_instruction_difficulty(tmp_path / "nope.csv")

    gamed = tmp_path / "df_gamed.csv"
    gamed.write_text("model,index,preference,instruction_difficulty,not_gamed_baseline\nv,0,0.5,0.1,False\n")
    with pytest.raises(lcm.LengthControlDataError, match=r"df_gamed.csv: missing column\(s\) \['std_delta_len'\]"):
        lcm.load_gamed_annotations(gamed)
    gamed.write_text("model,index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline\n"
                     "v,0,0.5,0.3,0.1,False\nv,1,0.6,0.2,0.1,maybe\n")
    with pytest.raises(lcm.LengthControlDataError, match=r"df_gamed.csv:3: field 'not_gamed_baseline'"):
        lcm.load_gamed_annotations(gamed)


def test_extreme_change_rule():
    assert not lcm.is_extreme_change(20, 15) and lcm.is_extreme_change(20, 9) and lcm.is_extreme_change(50, 63)


def test_tables_come_from_the_hub_cache_when_no_data_dir(tmp_path, monkeypatch, world):
    """The hub branch with the real huggingface_hub code, offline, on a hub cache laid out as a download leaves it."""
    from huggingface_hub import constants

    repo = tmp_path / "datasets--tatsu-lab--alpaca_eval"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "instruction_difficulty.csv").write_text(
        "index,instruction_difficulty\n" + "".join(f"{i},{d}\n" for i, d in enumerate(world.difficulty)))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))

    ref, model = world.outputs(1.0)
    pref, _ = world.judge(ref, model, 0.2)
    rows = [{"id": i, "reference": r} for i, r in enumerate(ref[:40])]
    protocol = {"length_control": {"instruction_difficulty": "instruction_difficulty.csv",
                                   "gamed_annotations": "df_gamed.csv"}}
    numbers, settings = ae.length_control(protocol, None, rows, model[:40], list(pref[:40]))
    assert 0 < numbers["length_controlled_win_rate"] < 100
    info = settings["length_controlled"]
    assert info["files"]["instruction_difficulty"].startswith(str(snapshot))
    assert info["regularized_to_gamed_baselines"] is False
    assert "df_gamed.csv not downloaded from tatsu-lab/alpaca_eval" in info["not_found"][0]

    (snapshot / "instruction_difficulty.csv").unlink()
    numbers, settings = ae.length_control(protocol, None, rows, model[:40], list(pref[:40]))
    assert numbers["length_controlled_win_rate"] is None and settings["length_controlled"].startswith("not computed")


def test_data_dir_with_gamed_annotations_gives_alpaca_eval_fit(tmp_path, world):
    """From --data DIR: difficulty taken from df_gamed.csv (the table is not read), the regularized fit."""
    gamed = world.gamed_frame()
    gamed.to_csv(tmp_path / "df_gamed.csv", index=False)
    (tmp_path / "instruction_difficulty.csv").write_text("index,instruction_difficulty\n0,not-read\n")
    ref, model = world.outputs(1.5)
    pref, _ = world.judge(ref, model, 0.1)
    rows = [{"id": i, "reference": r} for i, r in enumerate(ref)]
    protocol = {"length_control": {"instruction_difficulty": "instruction_difficulty.csv",
                                   "gamed_annotations": "df_gamed.csv"}}
    numbers, settings = ae.length_control(protocol, tmp_path, rows, model, list(pref))
    direct = lcm.length_controlled_win_rate(list(pref), model, ref, list(range(N)), dict(enumerate(world.difficulty)),
                                            gamed.drop(columns="model"))
    assert numbers["length_controlled_win_rate"] == pytest.approx(direct["length_controlled_win_rate"], abs=1e-9)
    info = settings["length_controlled"]
    assert info["regularized_to_gamed_baselines"] is True and info["not_found"] is None
    assert set(info["files"]) == {"gamed_annotations"}
