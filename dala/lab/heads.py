"""Heads fitted in milliseconds on bank features, one per imbalance strategy.

A head is a linear layer (logistic regression) or a small MLP on standardised features. The
linear head with a cross-entropy loss is scikit-learn's ``LogisticRegression`` (L-BFGS, the
class weights of :func:`dala.train.imbalance.class_weights`); focal loss and the MLP are fitted
full-batch with L-BFGS in torch on the training loop's own losses
(:func:`dala.train.imbalance.make_loss`). Resampling is the training loop's (:func:`dala.train.imbalance.oversample_indices`) or
imbalanced-learn's (SMOTE, random undersampling). What each strategy does:

- ``none``, ``class_weight``, ``focal``: the loss; ``oversample``, ``smote``, ``undersample``:
  the training points (SMOTE in feature space, after standardisation).
- ``logit_adjust`` (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, post-hoc
  form): the plain head's logits minus ``tau * log(prior)``, prior = the training class shares;
  in the binary task ``P_adj(malignant) = sigmoid(z1 - z0 - tau * log(pi1 / pi0))``.
- ``threshold`` (Buda et al., Neural Networks 2018): the plain head, with the decision threshold
  moved to the cut that maximises GMean (sqrt(TPR * TNR), from scikit-learn's ``roc_curve``) on
  the validation patients.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dala.lab.common import HEADS, LabError, check_strategy

C_DEFAULT = 0.01  # inverse L2 strength on standardised features: strong, as few patients train
MAX_ITER = 200
MLP_HIDDEN = 64
LBFGS_STEPS = 60
FOCAL_GAMMA = 2.0
LOGIT_TAU = 1.0


@dataclass
class FittedHead:
    strategy: str
    head: str
    net: nn.Module
    center: np.ndarray  # (D,) standardisation
    scale: np.ndarray  # (D,)
    prior: tuple[float, float]  # training class shares (benign, malignant) before any resampling
    fitted_counts: dict[str, int]  # images (or points) the head was fitted on, per class
    threshold: float = 0.5  # the strategy's decision threshold (moved by ``threshold``)
    logit_offset: float = 0.0  # subtracted from z1 - z0 (``logit_adjust``)
    info: dict = field(default_factory=dict)

    @torch.no_grad()
    def margin(self, X: np.ndarray) -> np.ndarray:
        """z1 - z0 of the fitted net (before any logit adjustment), (N,)."""
        x = torch.from_numpy(((np.asarray(X, dtype=np.float32) - self.center) / self.scale).astype(np.float32))
        z = self.net(x)  # (N, 2)
        return (z[:, 1] - z[:, 0]).double().numpy()

    def prob_malignant(self, X: np.ndarray) -> np.ndarray:
        """P(malignant) after this strategy's adjustment, (N,) float64."""
        return _sigmoid(self.margin(X) - self.logit_offset)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def _net(kind: str, dim: int, gen: torch.Generator) -> nn.Module:
    if kind == "linear":
        net = nn.Linear(dim, 2)
        nn.init.zeros_(net.weight)
        nn.init.zeros_(net.bias)
        return net
    net = nn.Sequential(nn.Linear(dim, MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, 2))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.zero_()
    return net


def _resample(strategy: str, X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if strategy == "oversample":
        from dala.train.imbalance import oversample_indices

        idx = oversample_indices(y, seed=seed)
        return X[idx], y[idx]
    if strategy == "undersample":
        from imblearn.under_sampling import RandomUnderSampler

        idx, _ = RandomUnderSampler(random_state=seed).fit_resample(np.arange(len(y)).reshape(-1, 1), y)
        idx = idx.ravel()
        return X[idx], y[idx]
    if strategy == "smote":
        from imblearn.over_sampling import SMOTE

        n_min = int(np.bincount(y, minlength=2).min())
        if n_min < 2:
            raise LabError(f"SMOTE needs at least 2 images of the minority class to interpolate between; the "
                           f"training set has {n_min}. Use a ratio nearer 1, or another strategy.")
        Xr, yr = SMOTE(k_neighbors=min(5, n_min - 1), random_state=seed).fit_resample(X, y)
        return np.asarray(Xr, dtype=np.float32), np.asarray(yr)
    return X, y


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray) -> tuple[float, float]:
    """(threshold, validation GMean): dala's one threshold rule (:func:`dala.calibration.choose_threshold`,
    GMean on validation, ties towards 0.5). Predictions are ``p >= threshold``."""
    from dala.calibration import CalibrationError, choose_threshold as lock_threshold, metric_at_threshold

    y_val = np.asarray(y_val)
    try:
        thr = lock_threshold(y_val, p_val, metric="gmean")
    except CalibrationError:
        raise LabError("threshold moving needs validation patients of both classes; this split's validation part "
                       "has one. Use another split seed, or a dataset with more patients.") from None
    return thr, metric_at_threshold(y_val.astype(int), np.asarray(p_val), thr, "gmean")


def fit_head(X: np.ndarray, y: np.ndarray, strategy: str, *, head: str = "linear", seed: int = 0,
             X_val: np.ndarray | None = None, y_val: np.ndarray | None = None, base: FittedHead | None = None,
             C: float = C_DEFAULT) -> FittedHead:
    """Fit one head on (N, D) features ``X`` and labels ``y`` (0 benign, 1 malignant).

    ``X_val``/``y_val`` are needed by ``threshold``. ``base``: an already fitted ``none`` head on
    the same data, which ``logit_adjust`` and ``threshold`` reuse (they are post-hoc).
    """
    check_strategy(strategy)
    if head not in HEADS:
        raise LabError(f"head {head!r} is unknown: use one of {', '.join(HEADS)}.")
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0:
        raise LabError("the training set holds only one class; use a ratio nearer 1 or more patients.")
    prior = (float(counts[0] / counts.sum()), float(counts[1] / counts.sum()))
    if strategy in ("logit_adjust", "threshold"):
        plain = base if base is not None else fit_head(X, y, "none", head=head, seed=seed, C=C)
        out = FittedHead(strategy=strategy, head=head, net=plain.net, center=plain.center, scale=plain.scale,
                         prior=prior, fitted_counts=dict(plain.fitted_counts), info=dict(plain.info))
        if strategy == "logit_adjust":
            out.logit_offset = LOGIT_TAU * math.log(prior[1] / prior[0])
            out.info["tau"] = LOGIT_TAU
        else:
            if X_val is None or y_val is None or len(y_val) == 0:
                raise LabError("threshold moving needs a validation part; use a split with validation patients.")
            out.threshold, out.info["val_gmean"] = choose_threshold(y_val, plain.prob_malignant(X_val))
        return out

    X = np.asarray(X, dtype=np.float32)
    center = X.mean(0)
    scale = X.std(0) + 1e-6
    Xs = (X - center) / scale
    with single_thread():
        Xf, yf = _resample(strategy, Xs, y, seed)
        if head == "linear" and strategy != "focal":
            net, info = _fit_logistic(Xf, yf, strategy, C=C)
        else:
            net, info = _fit_torch(Xf, yf, strategy, head=head, seed=seed, C=C)
    fitted = np.bincount(np.asarray(yf), minlength=2)
    return FittedHead(strategy=strategy, head=head, net=net, center=center, scale=scale, prior=prior,
                      fitted_counts={"benign": int(fitted[0]), "malignant": int(fitted[1])}, info=info)


@contextlib.contextmanager
def single_thread():
    """One BLAS/torch thread for a fit: a head is milliseconds of small matrix products, and on a
    2-core server shared by a class, extra threads only fight each other (measured: 2 threads made
    a fit 30x slower under load)."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def _fit_logistic(X: np.ndarray, y: np.ndarray, strategy: str, *, C: float) -> tuple[nn.Module, dict]:
    """scikit-learn's L-BFGS logistic regression (cross-entropy losses), as a torch Linear."""
    from sklearn.linear_model import LogisticRegression

    weight = None
    if strategy == "class_weight":
        from dala.train.imbalance import class_weights

        w = class_weights(y, 2).numpy()
        weight = {0: float(w[0]), 1: float(w[1])}
    clf = LogisticRegression(C=C, class_weight=weight, max_iter=MAX_ITER, tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on separable tiny sets: the fit is still usable
        clf.fit(X, y)
    net = nn.Linear(X.shape[1], 2)
    with torch.no_grad():  # sklearn's binary model is one margin w.x + b: logits (0, margin)
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1] = torch.from_numpy(clf.coef_[0].astype(np.float32))
        net.bias[1] = float(clf.intercept_[0])
    return net.eval(), {"solver": "sklearn LogisticRegression(lbfgs)", "C": C, "iterations": int(clf.n_iter_[0])}


def _fit_torch(X: np.ndarray, y: np.ndarray, strategy: str, *, head: str, seed: int, C: float) -> tuple[nn.Module, dict]:
    """Full-batch L-BFGS in torch with the training loop's own losses (focal loss; the MLP head)."""
    from dala.train.imbalance import make_loss

    gen = torch.Generator().manual_seed(seed)
    net = _net(head, X.shape[1], gen)
    loss_fn = make_loss(strategy if strategy in ("class_weight", "focal") else "none", y, num_classes=2,
                        gamma=FOCAL_GAMMA)
    xt, yt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    l2 = 1.0 / (2.0 * C * len(y))  # the same penalty as sklearn's C on a summed loss
    weights = [p for n_, p in net.named_parameters() if n_.endswith("weight")]
    opt = torch.optim.LBFGS(list(net.parameters()), lr=1.0, max_iter=LBFGS_STEPS, history_size=10,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def objective():
        return loss_fn(net(xt), yt) + l2 * sum((w * w).sum() for w in weights)

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = float(objective())
    return net.eval(), {"solver": "torch L-BFGS", "C": C, "loss": final}
