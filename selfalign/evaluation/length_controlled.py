"""Length-controlled AlpacaEval win rate: the GLM that alpaca_eval fits (`length_controlled_v1`).

Dubois, Galambosi, Liang, Hashimoto, "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic Evaluators"
(arXiv:2404.04475). For instruction x with baseline output b and model output m, the judge's preference for m is
modelled as

    P(m > b | x) = sigmoid( θ_len · tanh(Δlen_x / sd(Δlen)) + θ_x · γ_x + θ_m ),   Δlen_x = len(b) - len(m)

(characters; sd over the model's rows, ddof 1), with γ_x the instruction difficulty (alpaca_eval's published
table) and no intercept. The three columns carry alpaca_eval's names, so fitted weights can be appended to its
`lc_weights` CSV. The length-controlled win rate is the mean prediction with the length term switched off,
100 · mean_x sigmoid(θ_x · γ_x + θ_m); its standard error is the standard error of those predictions (ddof 1),
as alpaca_eval 0.6 reports `lc_standard_error`.

Fitting follows alpaca_eval exactly: the preferences are continuous labels (each row duplicated as a positive with
weight p and a negative with weight 1 - p); L1-penalized logistic regression (liblinear, no intercept) with C chosen
among 10 values on a log grid by 5-fold cross-validation grouped by row, scored by the continuous log loss.
With `gamed` annotations (the hub's `df_gamed.csv`: the baseline's own verbose and concise variants, judged against
it, with `not_gamed_baseline = False`), those rows join the fit with weight λ/2 each (λ = 0.2), which regularizes
θ_len and θ_x toward what length alone does to the baseline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selfalign.errors import SelfAlignError

FEATURES = ("np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)")
GAMED_COLUMNS = ("index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline")


class LengthControlDataError(SelfAlignError, ValueError):
    """A difficulty table or gamed-annotation file that cannot be used; the message names file, line and field."""


def load_instruction_difficulty(path: Path) -> dict[int, float]:
    """alpaca_eval's `instruction_difficulty.csv`: a header, then `index,instruction_difficulty` per instruction."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise LengthControlDataError(f"{path}: instruction-difficulty table not found")
    table = pd.read_csv(path, index_col=0)
    if table.shape[1] != 1:
        raise LengthControlDataError(f"{path}: expected two columns (index, instruction_difficulty), found "
                                     f"{[table.index.name, *table.columns]}")
    values = pd.to_numeric(table.iloc[:, 0], errors="coerce")
    _first_bad_line(path, values.isna().to_numpy(), table.columns[0])
    try:
        indices = [int(i) for i in table.index]
    except (TypeError, ValueError):
        bad = next(n for n, i in enumerate(table.index) if not str(i).lstrip("-").isdigit())
        raise LengthControlDataError(f"{path}:{bad + 2}: field {table.index.name or 'index'!r} is not an integer "
                                     f"({table.index[bad]!r})") from None
    return dict(zip(indices, values.astype(float)))


def load_gamed_annotations(path: Path):
    """alpaca_eval's `df_gamed.csv` (a `model` column is ignored): rows ready to join the fit."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise LengthControlDataError(f"{path}: gamed-baseline annotations not found")
    frame = pd.read_csv(path)
    missing = [c for c in GAMED_COLUMNS if c not in frame.columns]
    if missing:
        raise LengthControlDataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    for column in ("index", "std_delta_len", "instruction_difficulty"):
        _first_bad_line(path, pd.to_numeric(frame[column], errors="coerce").isna().to_numpy(), column)
    flags = frame["not_gamed_baseline"].map({True: True, False: False, "True": True, "False": False})
    _first_bad_line(path, flags.isna().to_numpy(), "not_gamed_baseline")
    frame = frame[list(GAMED_COLUMNS)].copy()
    frame["not_gamed_baseline"] = flags.astype(bool)
    return frame


def _first_bad_line(path: Path, bad: np.ndarray, field: str) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise LengthControlDataError(f"{path}:{row + 2}: field {field!r} is missing or not a number")


def design_matrix(std_delta_len, difficulty, not_gamed) -> np.ndarray:
    """Rows of (tanh(std_delta_len), instruction_difficulty, not_gamed_baseline), the formula's three columns."""
    return np.column_stack([np.tanh(np.asarray(std_delta_len, float)), np.asarray(difficulty, float),
                            np.asarray(not_gamed, float)])


def predict_preferences(weights, features: np.ndarray) -> np.ndarray:
    """sigmoid(features · weights), computed stably."""
    logits = np.asarray(features, float) @ np.asarray(weights, float)
    return np.exp(-np.logaddexp(0.0, -logits))


def continuous_log_loss(y_true, y_pred, true_prob, true_sample_weight=None) -> float:
    """Log loss against probabilities, scored on the duplicated rows (a positive row carries p, a negative 1 - p)."""
    target = np.where(np.asarray(y_true) == 1, true_prob, 1 - np.asarray(true_prob))
    y_pred = np.clip(y_pred, 1e-15, 1 - 1e-15)
    loss = target * np.log(y_pred) + (1 - target) * np.log(1 - y_pred)
    if true_sample_weight is not None:
        loss = loss * true_sample_weight
    return float(-np.mean(loss))


def fit_glm(features: np.ndarray, preferences: np.ndarray, sample_weight: np.ndarray | None = None,
            n_splits: int = 5, C: float = 100.0, seed: int = 123) -> np.ndarray:
    """Weights of the L1 logistic regression on continuous labels (see the module docstring); C by grouped CV
    when n_splits >= 2, else the fixed C."""
    import sklearn
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    features, preferences = np.asarray(features, float), np.asarray(preferences, float)
    n = len(preferences)
    X = np.vstack([features, features])
    y = np.concatenate([np.ones(n, int), np.zeros(n, int)])
    true_prob = np.concatenate([preferences, 1 - preferences])
    true_weight = None if sample_weight is None else np.concatenate([sample_weight, sample_weight]).astype(float)
    fit_weight = true_prob if true_weight is None else true_prob * true_weight
    # liblinear with an L1 penalty: l1_ratio 1 is the L1 penalty in scikit-learn >= 1.8's parametrization.
    common = dict(solver="liblinear", fit_intercept=False, random_state=seed)
    n_splits = min(n_splits, n)
    if n_splits < 2:
        model = LogisticRegression(C=C, l1_ratio=1.0, **common)
        model.fit(X, y, sample_weight=fit_weight)
        return model.coef_[0].copy()
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_scorer(continuous_log_loss, response_method="predict_proba", greater_is_better=False)
        scorer = scorer.set_score_request(true_prob=True, true_sample_weight=True)
        model = LogisticRegressionCV(Cs=10, l1_ratios=(1.0,), cv=GroupKFold(n_splits=n_splits), scoring=scorer,
                                     use_legacy_attributes=False, **common)
        model.set_fit_request(sample_weight=True)
        model.fit(X, y, sample_weight=fit_weight, groups=np.concatenate([np.arange(n), np.arange(n)]),
                  true_prob=true_prob, true_sample_weight=true_weight)
    return model.coef_[0].copy()


def length_controlled_win_rate(preferences: list[float | None], model_outputs: list[str],
                               reference_outputs: list[str], indices: list[int], difficulty: dict[int, float],
                               gamed=None, regularize_to_baseline_lambda: float = 0.2, n_splits: int = 5) -> dict:
    """The length-controlled win rate of one model against the reference outputs.

    `preferences` are P(model output better) per instruction (None: the judge abstained; such rows are left out
    of the fit but predicted, as alpaca_eval does); `indices` are the instructions' positions in the 805.
    """
    missing = [i for i in indices if i not in difficulty]
    if missing:
        raise LengthControlDataError(f"instruction difficulty missing for instruction index(es) {missing[:5]}")
    delta_len = np.array([len(b) - len(m) for b, m in zip(reference_outputs, model_outputs)], float)
    sd = delta_len.std(ddof=1) if len(delta_len) > 1 else 0.0
    std_delta_len = delta_len / sd if sd > 0 else np.zeros_like(delta_len)
    gamma = np.array([difficulty[i] for i in indices], float)
    pref = np.array([np.nan if p is None else p for p in preferences], float)
    X = design_matrix(std_delta_len, gamma, np.ones(len(gamma)))
    known = ~np.isnan(pref)
    X_train, y_train, weight = X[known], pref[known], None
    regularized = gamed is not None and bool(regularize_to_baseline_lambda)
    if regularized:
        gamed = gamed[gamed["preference"].notna()]
        X_gamed = design_matrix(gamed["std_delta_len"], gamed["instruction_difficulty"], gamed["not_gamed_baseline"])
        # Two gamed baselines share the regularization weight, as in alpaca_eval.
        gamed_weight = np.where(gamed["not_gamed_baseline"], 1.0, regularize_to_baseline_lambda / 2)
        X_train = np.vstack([X_gamed, X_train])
        y_train = np.concatenate([gamed["preference"].to_numpy(float), y_train])
        weight = np.concatenate([gamed_weight, np.ones(int(known.sum()))])
    weights = fit_glm(X_train, y_train, weight, n_splits=n_splits)
    predicted = predict_preferences(weights, design_matrix(np.zeros(len(gamma)), gamma, np.ones(len(gamma))))
    lc = 100 * float(predicted.mean())
    raw = 100 * float(np.nanmean(pref))
    return {"length_controlled_win_rate": lc,
            "lc_standard_error": 100 * float(predicted.std(ddof=1) / np.sqrt(len(predicted))) if len(predicted) > 1
            else float("nan"),
            "weights": dict(zip(FEATURES, map(float, weights))),
            "regularized_to_gamed_baselines": regularized, "n_fit_rows": int(len(y_train)),
            "extreme_change_warning": is_extreme_change(raw, lc)}


def is_extreme_change(raw: float, lc: float, abs_diff: float = 10, rel_diff: float = 4) -> bool:
    """alpaca_eval's warning sign that the GLM failed: LC far below or above the raw win rate."""
    too_small = lc < min(raw - raw / rel_diff, raw - abs_diff)
    too_large = lc > max(raw + (100 - raw) / rel_diff, raw + abs_diff)
    return bool(too_small or too_large)
