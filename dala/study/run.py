"""Running a study: each manifest entry is one :func:`dala.train.run_training` call into its own run
folder (the study adds no training loop of its own), resumably, on one of two executors.

- ``local`` (default): one run at a time in this process on the machine's accelerator or CPU, or,
  when several GPUs are visible, one run per GPU, each in its own ``python -m dala.study.run``
  process pinned with ``CUDA_VISIBLE_DEVICES``.
- ``ray``: one Ray task per run (``num_gpus=1`` where the cluster has GPUs), on a running cluster
  (``--address``) or a local one. Ray is imported only here, inside :func:`_ray_executor`.

Only the driver (the ``study run`` process) writes ``state.json``; a run's own folder is written by
the training it runs. What a rerun does with each run: finished -> skipped; interrupted (a run
folder without report) -> resumed from ``checkpoints/last`` (restarted if it died before its
first checkpoint); failed -> retried until ``max_attempts``, the errors kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from dala.study.plan import (EVAL_DIR, STATE, StudyError, check_fingerprint, check_manifest, load_manifest)

EXECUTORS = ("local", "ray")
RAY_HINT = "pip install 'ray==2.60.0' (the version DALA Lab pins), or use --executor local"


# ---------------------------------------------------------------------------------------------
# state


def read_state(study: Path) -> dict:
    from dala.io import DamagedFileError, read_json, set_aside

    try:
        st = read_json(study / STATE, {"runs": {}}, expect=dict)
    except DamagedFileError:
        set_aside(study / STATE)  # kept for inspection; the run folders still say what is done
        st = {"runs": {}}
    if not isinstance(st.setdefault("runs", {}), dict) or not all(isinstance(v, dict) for v in st["runs"].values()):
        set_aside(study / STATE)  # valid JSON of the wrong shape: kept aside the same way
        st = {"runs": {}}
    return st


def _save_state(study: Path, state: dict) -> None:
    from dala.io import atomic_write_json

    state["updated"] = time.time()
    atomic_write_json(study / STATE, state)


def run_state(study: Path, entry: dict, state: dict, *, max_attempts: int) -> str:
    """``finished`` | ``running`` | ``interrupted`` | ``failed`` | ``left`` | ``retry``."""
    from dala.train.folder import RunFolder, read_report

    folder = RunFolder(study / entry["run_dir"])
    rec = state["runs"].get(entry["id"], {})
    if folder.path.is_dir() and folder.is_locked():
        return "running"
    if folder.path.is_dir() and folder.report_path.is_file() and (study / EVAL_DIR / f"{entry['id']}.json").is_file():
        try:
            if read_report(folder):
                return "finished"
        except ValueError:
            pass
    attempts = int(rec.get("attempts", 0))
    if rec.get("state") == "failed":
        return "failed" if attempts >= max_attempts else "retry"
    if folder.is_run():
        return "interrupted"
    return "left"


def study_status(study: str | os.PathLike) -> dict:
    """Counts (done / running / failed / left) and one row per run, for ``study status``."""
    study = Path(study).expanduser()
    manifest = load_manifest(study)
    state = read_state(study)
    max_attempts = int(manifest.get("max_attempts", 2))
    rows, counts = [], {"done": 0, "running": 0, "failed": 0, "left": 0}
    for e in manifest["runs"]:
        s = run_state(study, e, state, max_attempts=max_attempts)
        rec = state["runs"].get(e["id"], {})
        if rec.get("state") == "finished" and s != "finished" and s != "running":
            s_note = "its run folder was deleted or damaged after it finished: it will be run again"
        else:
            s_note = ""
        rows.append({"id": e["id"], "state": s, "attempts": rec.get("attempts", 0),
                     "error": rec.get("error"), "wall_s": rec.get("wall_s"), "note": s_note})
        counts["done" if s == "finished" else "running" if s == "running" else "failed" if s == "failed"
               else "left"] += 1
    return {"study": str(study), "preset": manifest.get("preset"), "total": len(rows), **counts, "runs": rows}


# ---------------------------------------------------------------------------------------------
# one run


def _config_for(study: Path, manifest: dict, entry: dict):
    from dala.train.config import TrainConfig

    cfg = dict(entry["config"])
    cfg["data_root"] = manifest.get("data_arg") and manifest["data"]
    cfg["split_file"] = str((study / entry["split_file"]).resolve())
    return TrainConfig.from_dict(cfg).validate()


def _lock_threshold(study: Path, entry: dict, *, device: str) -> dict:
    """Predict the validation part with the best checkpoint and lock the decision threshold on it
    (the one maximising balanced accuracy, ties nearest 0.5) before anything reads the test part
    for it. Written to ``eval/<id>.json``."""
    import numpy as np

    from dala.data import load_index
    from dala.io import atomic_write_json
    from dala.calibration import choose_threshold
    from dala.train.folder import read_config, read_split
    from dala.train.predict import load_for_inference, predict_images

    run_dir = study / entry["run_dir"]
    split = read_split(run_dir)
    cfg_data = read_config(run_dir).get("data_root")
    from dala.data import resolve_dataset

    index = load_index(resolve_dataset(cfg_data, progress=False))
    val = split.frames(index)["val"]
    dev = "cuda" if device == "cuda" else "cpu"
    model, ckcfg = load_for_inference(run_dir, device=dev)
    probs = predict_images(model, ckcfg, val["path"].tolist(), batch_size=32, device=dev)[:, 1] if len(val) \
        else np.zeros(0)
    y = val["target"].to_numpy()
    thr = choose_threshold(y, probs, metric="balanced_accuracy", default=0.5)
    out = {"id": entry["id"], "chosen_on": "validation", "criterion": "balanced_accuracy",
           "threshold": thr, "val": {"image_id": val["image_id"].tolist(), "patient": val["patient"].tolist(),
                                     "y_true": y.tolist(), "prob": np.round(probs, 6).tolist()},
           "locked_at": time.time()}
    atomic_write_json(study / EVAL_DIR / f"{entry['id']}.json", out)
    return out


def _finished_report(folder) -> dict | None:
    from dala.train.folder import read_report, read_status

    try:
        if folder.report_path.is_file() and read_status(folder).get("state") == "finished":
            return read_report(folder)
    except ValueError:  # damaged: train again
        return None
    return None


def execute_run(study: str | os.PathLike, run_id: str, *, progress: bool = False) -> dict:
    """Train (or resume) one run of the study and lock its threshold; never raises for the run's
    own failure: returns ``{"id", "state": "finished"|"failed"|"stopped", "error", "wall_s"}``."""
    study = Path(study).expanduser().resolve()
    t0 = time.time()
    try:
        from dala.train import run_training
        from dala.train.folder import RunFolder

        manifest = load_manifest(study)
        entry = next((r for r in manifest["runs"] if r["id"] == run_id), None)
        if entry is None:
            raise StudyError(f"run {run_id!r} is not in the study's manifest.")
        config = _config_for(study, manifest, entry)
        folder = RunFolder(study / entry["run_dir"])
        resume = folder.is_run()
        report = _finished_report(folder)  # trained, but killed while locking its threshold
        if report is None:
            report = run_training(config, folder.path, progress=progress, resume=resume)
        if not report:
            return {"id": run_id, "state": "stopped", "error": "stopped on request", "wall_s": time.time() - t0}
        _lock_threshold(study, entry, device=str(report.get("device", "cpu")).split(":")[0])
        return {"id": run_id, "state": "finished", "error": None, "wall_s": round(time.time() - t0, 2),
                "resumed": resume, "pid": os.getpid()}
    except Exception as exc:  # the run's failure is a result: recorded, retried, never the study's crash
        return {"id": run_id, "state": "failed", "error": f"{type(exc).__name__}: {exc}",
                "wall_s": round(time.time() - t0, 2)}


# ---------------------------------------------------------------------------------------------
# executors


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def _local_executor(study: Path, ids: list[str], on_done: Callable[[dict], None]) -> None:
    n_gpu = _local_gpus()
    if n_gpu <= 1:
        for rid in ids:
            on_done(execute_run(study, rid))
        return
    # one process per GPU: each run pinned to one device; threads only wait on the processes
    import queue

    free: queue.Queue[int] = queue.Queue()
    for g in range(n_gpu):
        free.put(g)
    lock = threading.Lock()
    todo = list(ids)

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                rid = todo.pop(0)
            gpu = free.get()
            try:
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
                proc = subprocess.run([sys.executable, "-m", "dala.study.run", str(study), rid], env=env,
                                      capture_output=True, text=True)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                out = json.loads(lines[-1]) if lines else {
                    "id": rid, "state": "failed", "error": f"worker exited {proc.returncode}: "
                    f"{(proc.stderr or '').strip().splitlines()[-1:] or ''}"}
            finally:
                free.put(gpu)
            with lock:
                on_done(out)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(n_gpu)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _check_address(address: str | None) -> None:
    """Fail fast on an address nobody answers (Ray itself would retry for a minute)."""
    from dala.net import probe

    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, or ray://HEAD:10001 for "
                         "Ray Client; `ray start --head` prints it).")
    ok, reason = probe(host, int(port), timeout=3.0)
    if not ok:
        raise StudyError(f"no Ray cluster answers at {address} ({reason}). Start one with `ray start --head` on "
                         "the head node and pass the address it prints, or leave --address out for a local "
                         "cluster on this machine.")


def _ray_executor(study: Path, ids: list[str], on_done: Callable[[dict], None], *, address: str | None,
                  num_cpus: int | None = None) -> None:
    try:
        import ray
    except ImportError:
        raise StudyError(f"the Ray executor needs Ray, which is not installed: {RAY_HINT}.") from None
    _check_address(address)
    started_here = not ray.is_initialized()
    if started_here:
        pkg_parent = str(Path(__file__).resolve().parents[2])
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:  # a local cluster: workers find dala where this process does
                env = {"PYTHONPATH": os.pathsep.join([pkg_parent, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
                ray.init(num_cpus=num_cpus or min(2, os.cpu_count() or 1), include_dashboard=False,
                         log_to_driver=False, runtime_env={"env_vars": env})
        except Exception as exc:
            raise StudyError(f"Ray could not start{f' against {address}' if address else ''} "
                             f"({type(exc).__name__}: {exc}). Check the address (`ray status` on the head node) "
                             f"or use --executor local.") from None
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        task = ray.remote(num_gpus=1 if gpus >= 1 else 0, num_cpus=1, max_retries=0)(execute_run)
        pending = {task.remote(str(study), rid): rid for rid in ids}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                rid = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as exc:  # the worker died (OOM, node lost): a failed attempt
                    out = {"id": rid, "state": "failed", "error": f"Ray task failed: {type(exc).__name__}: {exc}"}
                on_done(out)
    finally:
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------
# the study


def run_study(study: str | os.PathLike, *, executor: str = "local", address: str | None = None,
              progress: bool = True, retry_failed: bool = False, num_cpus: int | None = None) -> dict:
    """Run every run not yet finished; returns :func:`study_status` afterwards."""
    from dala.data import load_index, resolve_dataset
    from dala.io import FileLock

    if executor not in EXECUTORS:
        raise StudyError(f"executor {executor!r} is unknown: use local or ray.")
    if address and executor != "ray":
        raise StudyError("--address is for --executor ray.")
    study = Path(study).expanduser().resolve()
    manifest = load_manifest(study)
    check_manifest(study, manifest)
    root = resolve_dataset(manifest.get("data_arg") and manifest["data"], progress=progress)
    if not Path(root).is_dir():
        raise StudyError(f"the study's dataset {root} is not there; mount it at that path (the manifest's "
                         "`data`) and run again.")
    check_fingerprint(manifest, load_index(root), Path(root))
    (study / EVAL_DIR).mkdir(exist_ok=True)
    max_attempts = int(manifest.get("max_attempts", 2))
    with FileLock(study / ".study.lock", timeout=0, busy_message=(
            f"study {study} is already being run by another `study run`; wait for it, or watch it with "
            f"`python -m dala study status {study}`.")):
        state = read_state(study)
        if retry_failed:
            for rec in state["runs"].values():
                if rec.get("state") == "failed":
                    rec["attempts"] = 0
        todo, done0 = [], 0
        for e in manifest["runs"]:
            s = run_state(study, e, state, max_attempts=max_attempts)
            if s == "finished":
                done0 += 1
            elif s in ("left", "interrupted", "retry"):
                if state["runs"].get(e["id"], {}).get("state") == "finished":
                    print(f"warning: {e['id']} had finished but its run folder is gone or incomplete: "
                          "running it again", file=sys.stderr)
                todo.append(e["id"])
        from tqdm.auto import tqdm

        bar = tqdm(total=len(manifest["runs"]), initial=done0, unit="run", desc=f"study {study.name}",
                   disable=not progress, dynamic_ncols=True)

        def on_done(out: dict) -> None:
            rec = state["runs"].setdefault(out["id"], {"attempts": 0, "errors": []})
            rec["attempts"] = int(rec.get("attempts", 0)) + 1
            rec["state"], rec["wall_s"], rec["finished_at"] = out["state"], out.get("wall_s"), time.time()
            if out.get("error"):
                rec.setdefault("errors", []).append(out["error"])
                rec["error"] = out["error"]
                bar.write(f"{out['id']}: {out['state']}: {out['error']}")
            else:
                rec["error"] = None
            _save_state(study, state)
            bar.update(1 if out["state"] == "finished" else 0)
            bar.set_postfix(last=out["id"], refresh=True)

        for attempt in range(max_attempts):
            if not todo:
                break
            if executor == "ray":
                _ray_executor(study, todo, on_done, address=address, num_cpus=num_cpus)
            else:
                _local_executor(study, todo, on_done)
            todo = [rid for rid in todo
                    if state["runs"].get(rid, {}).get("state") == "failed"
                    and int(state["runs"][rid].get("attempts", 0)) < max_attempts]
        bar.close()
    return study_status(study)


def _main(argv: list[str]) -> int:
    """``python -m dala.study.run STUDY RUN_ID``: one run, its outcome as one JSON line (the
    multi-GPU local executor's worker)."""
    out = execute_run(argv[0], argv[1])
    print(json.dumps(out))
    return 0 if out["state"] == "finished" else 1


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
