"""Does quick mode learn offline? DALAResNet50 from random weights on the synthetic default.

Quick mode freezes the stem and trains the top on cached stem features. With ImageNet weights
the stem holds real features; offline it is random (BatchNorm calibrated on the training
images, see ``dala.train.engine.calibrate_batchnorm``). This runs the engine exactly as the CLI
and the app do -- patient-level split stratified by subtype, selection on validation GMean,
test on patients never seen -- once per split seed, and prints per seed:

* the test GMean, balanced accuracy and patient-level accuracy, with a 95 % bootstrap interval
  of the GMean that resamples *test patients* (images of one patient are not independent);
* the time it took: caching the stem (8 dihedral views) and the whole run.

"Chance" is GMean 0.5 (a coin flip scores sqrt(0.5 * 0.5)) and 0 for a constant predictor; a
run is called above chance when its whole interval lies above 0.5.

    python bench/bench_quick_offline.py                   # seeds 0 1 2, the Train form's settings
    python bench/bench_quick_offline.py --seeds 0 --also-full   # + full mode at 128 px, same split
    python bench/bench_quick_offline.py --seeds 0 --probe       # + why: linear probes on the stems
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def patient_bootstrap_gmean(y: np.ndarray, pred: np.ndarray, patients: np.ndarray, *, n: int = 2000,
                            seed: int = 0) -> tuple[float, float]:
    """95 % interval of the GMean over bootstrap resamples of test patients (not images)."""
    from imblearn.metrics import geometric_mean_score

    rng = np.random.default_rng(seed)
    groups = {p: np.flatnonzero(patients == p) for p in np.unique(patients)}
    keys = list(groups)
    scores = []
    for _ in range(n):
        idx = np.concatenate([groups[keys[i]] for i in rng.integers(0, len(keys), len(keys))])
        if len(np.unique(y[idx])) < 2:
            continue
        scores.append(geometric_mean_score(y[idx], pred[idx]))
    lo, hi = np.percentile(scores, [2.5, 97.5])
    return float(lo), float(hi)


def probe_random_stem(data_root, *, model_name: str, seed: int = 0) -> None:
    """Why the stem is prepared: a linear probe (logistic regression on per-channel mean and std of
    the features) trained on the training patients and scored on the test patients, for the
    random stem as initialised for training (its layer-1 and layer-3 outputs) and for the stem
    quick mode prepares (zeroed residual branches, dala.models.init)."""
    import torch
    from imblearn.metrics import geometric_mean_score
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dala.models import create_model, get_spec
    from dala.models.init import zero_init_residual
    from dala.train import TrainConfig, engine

    cfg = TrainConfig(data_root=data_root, model=model_name, pretrained=False, seed=seed)
    data = engine.prepare_data(cfg, progress=False)
    spec = get_spec(model_name)
    device = torch.device("cpu")
    dtype = engine.select_precision("auto", device)
    for prepared in (False, True):
        torch.manual_seed(seed)
        model = create_model(model_name, pretrained=False)
        stem, _top = spec.split(model)
        if prepared:
            zero_init_residual(stem)
        engine.calibrate_batchnorm(stem, engine.image_batches(data.train, size=spec.input_size, mean=spec.mean,
                                                              std=spec.std, batch_size=32),
                                   device=device, dtype=dtype, channels_last=True)
        stem.eval()
        taps = {"layer 3 (stem output)": stem}
        if not prepared and hasattr(model, "layer1"):
            taps = {"layer 1": model.layer1, **taps}
        pooled: dict[str, list] = {k: [] for k in taps}
        hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: pooled[k].append(
            torch.cat([o.float().mean((2, 3)), o.float().std((2, 3))], 1))) for k, m in taps.items()]

        def features(frame):
            for v in pooled.values():
                v.clear()
            with torch.no_grad():
                for x in engine.image_batches(frame, size=spec.input_size, mean=spec.mean, std=spec.std, batch_size=32):
                    with engine.autocast(device, dtype):
                        stem(x.contiguous(memory_format=torch.channels_last))
            return {k: torch.cat(v).numpy() for k, v in pooled.items()}

        train, test = features(data.train), features(data.test)
        for h in hooks:
            h.remove()
        for k in taps:
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000, class_weight="balanced"))
            clf.fit(train[k], data.train["target"])
            g = geometric_mean_score(data.test["target"], clf.predict(test[k]))
            print(f"linear probe, {'prepared' if prepared else 'standard'} random stem, {k}: test GMean {g:.2f}",
                  flush=True)


def one_run(*, seed: int, mode: str, image_size: int | None, lr: float, epochs: int, data_root, model: str,
            out: Path) -> dict:
    from dala.data import load_index
    from dala.train import TrainConfig, run_training

    cfg = TrainConfig(data_root=data_root, model=model, pretrained=False, mode=mode, image_size=image_size, lr=lr,
                      epochs=epochs, imbalance="class_weight", seed=seed)
    t0 = time.time()
    rep = run_training(cfg, out / f"{mode}-seed{seed}", progress=False)
    wall = time.time() - t0
    index = load_index(rep["data_root"]).set_index("image_id")
    ids = rep["test_predictions"]["image_id"]
    probs = np.asarray(rep["test_predictions"]["probs"])
    y = index.loc[ids, "target"].to_numpy()
    patients = index.loc[ids, "patient"].to_numpy()
    lo, hi = patient_bootstrap_gmean(y, probs.argmax(1), patients, seed=seed)
    t = rep["test"]
    return {"seed": seed, "mode": mode, "size": rep["image_size"], "gmean": t["gmean"], "lo": lo, "hi": hi,
            "bacc": t["balanced_accuracy"], "patient_acc": t["patient_accuracy"], "best_epoch": rep["best_epoch"],
            "cache_s": rep["feature_cache_s"], "total_s": wall, "test_patients": len(np.unique(patients)),
            "weights": rep["weight_source"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="dataset folder (default: the synthetic default)")
    ap.add_argument("--model", default="dala_resnet50")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split (and training) seeds")
    ap.add_argument("--epochs", type=int, default=None, help="default: the recommended offline setting")
    ap.add_argument("--lr", type=float, default=None, help="default: the recommended offline setting")
    ap.add_argument("--also-full", action="store_true", help="also train end to end at 128 px on the same splits")
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("--probe", action="store_true", help="first, linear probes on standard vs prepared random stems")
    args = ap.parse_args()

    import torch

    from dala.data.synth import ensure_default_dataset
    from dala.train.config import recommended_settings

    torch.set_num_threads(max(1, torch.get_num_threads()))
    data_root = args.data or str(ensure_default_dataset(progress=True))
    if args.probe:
        probe_random_stem(data_root, model_name=args.model, seed=args.seeds[0])
    rec = recommended_settings(args.model, pretrained=False)
    quick = {"mode": "quick", "image_size": None, "lr": args.lr or (rec["lr"] if rec["mode"] == "quick" else 3e-4),
             "epochs": args.epochs or (rec["epochs"] if rec["mode"] == "quick" else 12)}
    plans = [quick] + ([{"mode": "full", "image_size": 128, "lr": 3e-4, "epochs": args.epochs or 10}] if args.also_full else [])
    print(f"{args.model} from random weights (offline), data {data_root}, {torch.get_num_threads()} threads")
    print(f"quick mode: lr {quick['lr']}, {quick['epochs']} epochs, class-weighted loss, 8 cached views; chance GMean 0.5")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        rows = []
        for seed in args.seeds:
            for plan in plans:
                r = one_run(seed=seed, data_root=data_root, model=args.model, out=out, **plan)
                rows.append(r)
                print(f"seed {seed} {r['mode']:5s} {r['size']:>3d}px: test GMean {r['gmean']:.3f} "
                      f"[{r['lo']:.2f}, {r['hi']:.2f}] over {r['test_patients']} test patients, "
                      f"balanced acc {r['bacc']:.3f}, patient acc {r['patient_acc']:.3f}, best epoch {r['best_epoch']}; "
                      f"{r['total_s']:.0f} s ({r['cache_s']:.0f} s caching the stem)"
                      + ("  ABOVE CHANCE" if r["lo"] > 0.5 else ""), flush=True)
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sel = [r for r in rows if r["mode"] == mode]
        g = np.array([r["gmean"] for r in sel])
        t = np.array([r["total_s"] for r in sel])
        print(f"{mode}: test GMean {g.mean():.3f} +- {g.std():.3f} over {len(sel)} seed(s); "
              f"{sum(r['lo'] > 0.5 for r in sel)}/{len(sel)} intervals above 0.5; mean time {t.mean():.0f} s")


if __name__ == "__main__":
    main()
