"""dala.hub without a network: caches laid out exactly as huggingface_hub lays them out, a real tiny
run for the upload folder and model card, a mocked HfApi for the send, hostile archives."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from dala.errors import DalaError, DataError, HubError, RunError

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO = "dala-test/tiny-cnn"


# ---------------------------------------------------------------------------------------------
# helpers: a Hub cache as huggingface_hub writes it
# ---------------------------------------------------------------------------------------------

def make_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes | Path], *, repo_type: str = "model",
                   ref: str = "main", commit: str | None = None) -> str:
    """``<cache>/<type>s--owner--name/{blobs,refs,snapshots}``: blobs named by their hash, snapshot
    entries as relative symlinks to them, ``refs/<ref>`` holding the commit hash with no newline."""
    commit = commit or hashlib.sha1(repr(sorted(files)).encode() + repo_id.encode()).hexdigest()
    storage = cache / ("--".join([f"{repo_type}s", *repo_id.split("/")]))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)  # no trailing newline, as the library writes it
    blobs = storage / "blobs"
    blobs.mkdir(exist_ok=True)
    snap = storage / "snapshots" / commit
    for rel, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return commit


def checkpoint_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    p = f"{prefix}/" if prefix else ""
    return {f"{p}model.safetensors": folder / "model.safetensors", f"{p}config.json": folder / "config.json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "dala", *args], capture_output=True, text=True, env=full,
                          cwd=REPO_ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from dala.models import create_model
    from dala.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("tiny_cnn", pretrained=False).eval()
    folder = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny", class_names=["benign", "malignant"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
    return folder, x, y


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_synth_root):
    from dala.train import TrainConfig, run_training

    run_dir = tmp_path_factory.mktemp("runs") / "tiny-run"
    run_training(TrainConfig(data_root=str(tiny_synth_root), model="tiny_cnn", pretrained=False, image_size=48,
                             epochs=1, batch_size=16, quick_views=1), run_dir, progress=False)
    return run_dir


# ---------------------------------------------------------------------------------------------
# pull / list, offline
# ---------------------------------------------------------------------------------------------

def test_pull_resolves_cached_checkpoint_offline_and_rebuilds_identical_model(tmp_path, tiny_checkpoint):
    import torch

    from dala.hub import pull, pull_checkpoint
    from dala.models.checkpoint import load_checkpoint

    folder, x, y = tiny_checkpoint
    cache = tmp_path / "hub"
    commit = make_hub_cache(cache, REPO, checkpoint_files(folder))
    assert (cache / "models--dala-test--tiny-cnn" / "refs" / "main").read_bytes() == commit.encode()

    t0 = time.perf_counter()
    got = pull_checkpoint(REPO, cache_dir=cache)
    assert time.perf_counter() - t0 < 5
    assert got == cache / "models--dala-test--tiny-cnn" / "snapshots" / commit
    model, config = load_checkpoint(got)
    with torch.no_grad():
        assert torch.equal(model(x), y)
    assert config["name"] == "tiny_cnn"

    res = pull(REPO, cache_dir=cache)
    assert res.commit == commit and res.from_cache and res.revision == "main"
    # pinning: the commit resolves the same folder
    assert pull_checkpoint(REPO, revision=commit, cache_dir=cache) == got


def test_pull_subfolder_and_list_checkpoints_offline(tmp_path, tiny_checkpoint):
    from dala.hub import list_checkpoints, pull_checkpoint

    folder = tiny_checkpoint[0]
    cache = tmp_path / "hub"
    files = {**checkpoint_files(folder), **checkpoint_files(folder, "40X"), **checkpoint_files(folder, "by_mag/400X"),
             "notes/config.json": folder / "config.json", "README.md": b"# card\n"}
    commit = make_hub_cache(cache, REPO, files)
    assert list_checkpoints(REPO, cache_dir=cache) == ["", "40X", "by_mag/400X"]
    sub = pull_checkpoint(REPO, subfolder="40X", cache_dir=cache)
    assert sub.name == "40X" and sub.parent.name == commit
    with pytest.raises(HubError, match="40X|not in the local cache"):
        pull_checkpoint(REPO, subfolder="100X", cache_dir=cache)


def test_missing_repo_offline_fails_fast_with_a_clear_message(tmp_path):
    from dala.hub import fetch_dataset, list_checkpoints, pull_checkpoint

    for call in (lambda: pull_checkpoint("nobody/missing", cache_dir=tmp_path),
                 lambda: list_checkpoints("nobody/missing", cache_dir=tmp_path),
                 lambda: fetch_dataset("nobody/missing", cache_dir=tmp_path, dest=tmp_path / "d")):
        t0 = time.perf_counter()
        with pytest.raises(HubError) as err:
            call()
        assert time.perf_counter() - t0 < 5
        msg = str(err.value)
        assert "nobody/missing" in msg and "HF_HUB_OFFLINE" in msg and "Fix:" in msg


def test_pull_refuses_a_repo_that_is_not_a_dala_checkpoint(tmp_path):
    from dala.hub import pull_checkpoint

    cache = tmp_path / "hub"
    make_hub_cache(cache, REPO, {"model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
                                 "config.json": b'{"architectures": ["BertModel"]}'})
    with pytest.raises(HubError, match="does not hold a DALA checkpoint"):
        pull_checkpoint(REPO, cache_dir=cache)


def test_cli_pull_and_ls_in_an_offline_subprocess(tmp_path, tiny_checkpoint):
    """HF_HUB_OFFLINE and the cache location are read by huggingface_hub at import: set them
    before the process starts, and pass no cache_dir."""
    folder = tiny_checkpoint[0]
    cache = tmp_path / "hub"
    commit = make_hub_cache(cache, REPO, {**checkpoint_files(folder), **checkpoint_files(folder, "40X")})
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    out = run_cli(["hub", "pull", REPO, "--subfolder", "40X", "--json"], env)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["commit"] == commit and Path(res["folder"]) == cache / "models--dala-test--tiny-cnn" / "snapshots" / commit / "40X"
    out = run_cli(["hub", "ls", REPO], env)
    assert out.returncode == 0 and out.stdout.split() == [".", "40X"]

    t0 = time.perf_counter()
    out = run_cli(["hub", "pull", "nobody/missing"], env)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nobody/missing" in lines[0]
    assert "Traceback" not in out.stderr
    assert time.perf_counter() - t0 < 20  # includes interpreter start-up


def test_unreachable_hub_fails_fast_when_not_offline(tmp_path):
    """Offline mode off but no route to the Hub: no 25 s of retries, a HubError at once."""
    port = free_port()  # nothing listens there
    env = {"HF_HUB_OFFLINE": "0", "DALA_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}",
           "HF_HUB_CACHE": str(tmp_path), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    t0 = time.perf_counter()
    out = run_cli(["hub", "pull", "nobody/missing"], env)
    assert out.returncode == 2, out.stderr
    assert "cannot be reached" in out.stderr and "cannot connect" in out.stderr
    assert time.perf_counter() - t0 < 20


# ---------------------------------------------------------------------------------------------
# config: default repo ids
# ---------------------------------------------------------------------------------------------

def test_default_repo_id_from_env_then_config_files(tmp_path, monkeypatch):
    from dala.hub import default_dataset_id, default_repo_id

    monkeypatch.delenv("DALA_HUB_REPO", raising=False)
    monkeypatch.delenv("DALA_HUB_DATASET", raising=False)
    monkeypatch.setenv("DALA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_repo_id() is None and default_dataset_id() is None
    (tmp_path / "xdg" / "dala").mkdir(parents=True)
    (tmp_path / "xdg" / "dala" / "config.toml").write_text('[hub]\nrepo_id = "user/from-xdg"\n')
    assert default_repo_id() == "user/from-xdg"
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.toml").write_text('[hub]\nrepo_id = "user/from-home"\ndataset_id = "user/bh"\n')
    assert default_repo_id() == "user/from-home" and default_dataset_id() == "user/bh"
    monkeypatch.setenv("DALA_HUB_REPO", "user/from-env")
    assert default_repo_id() == "user/from-env"
    monkeypatch.delenv("DALA_HUB_REPO")
    (tmp_path / "home" / "config.toml").write_text("[hub\nrepo_id=")
    with pytest.raises(HubError, match="not valid TOML"):
        default_repo_id()


def test_repo_ids_are_validated_and_urls_accepted():
    from dala.hub import normalize_repo_id

    assert normalize_repo_id(" org/name ") == "org/name"
    assert normalize_repo_id("https://huggingface.co/org/name/tree/main/40X") == "org/name"
    assert normalize_repo_id("https://huggingface.co/datasets/org/bh", repo_type="dataset") == "org/bh"
    for bad in ("", "a/b/c", "../x", "org/na--me", "org/name.git", "org/ name"):
        with pytest.raises(HubError):
            normalize_repo_id(bad)


# ---------------------------------------------------------------------------------------------
# push: the upload folder and model card
# ---------------------------------------------------------------------------------------------

def _front_matter(text: str) -> dict:
    import yaml

    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_prepare_upload_builds_the_exact_folder(tmp_path, tiny_run):
    import torch

    from dala.hub import prepare_upload
    from dala.models.checkpoint import load_checkpoint

    out = prepare_upload(tiny_run, tmp_path / "upload", repo_id="me/dala-tiny")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.safetensors", "config.json", "README.md", "curves.png", "report.json", "split.json", "metrics.jsonl"])
    best = tiny_run / "checkpoints" / "best"
    assert (out / "model.safetensors").read_bytes() == (best / "model.safetensors").read_bytes()
    for name in ("split.json", "metrics.jsonl"):
        assert (out / name).read_bytes() == (tiny_run / name).read_bytes()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # config.json: the checkpoint's, with local paths reduced to a name
    cfg, orig = json.loads((out / "config.json").read_text()), json.loads((best / "config.json").read_text())
    assert {k: v for k, v in cfg.items() if k != "extra"} == {k: v for k, v in orig.items() if k != "extra"}
    assert cfg["extra"]["run_config"]["data_root"].startswith("<local>/")
    report_text = (out / "report.json").read_text()
    assert str(tiny_run.parent) not in report_text and os.path.dirname(orig["extra"]["run_config"]["data_root"]) not in report_text

    # the folder is a checkpoint: same model, same outputs
    m1, _ = load_checkpoint(out)
    m2, _ = load_checkpoint(best)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(m1(x), m2(x))

    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["license"] and meta["pipeline_tag"] == "image-classification"
    assert {"image-classification", "histopathology", "breakhis", "pytorch", "dala"} <= set(meta["tags"])
    assert "synthetic-data" in meta["tags"] and {"accuracy", "gmean", "roc_auc"} <= set(meta["metrics"])
    report = json.loads(report_text)
    assert "| all magnifications |" in card and all(f"| {m}X |" in card for m in (40, 100, 200, 400))
    assert f"{report['test']['accuracy']:.3f}" in card
    assert "![Training curves" in card and "(curves.png)" in card
    assert report["split"]["sha256"] in card and "Split mode:** patient" in card
    test_counts = report["split"]["counts"]["test"]
    assert f"| test | {test_counts['images']} | {test_counts['patients']} |" in card
    assert "random initialisation" in card
    assert "not for diagnosis" in card.lower() and "synthetic" in card.lower()
    from huggingface_hub import ModelCard

    assert "breakhis" in ModelCard(card).data.tags  # the library parses it

    with pytest.raises(HubError, match="not empty"):
        prepare_upload(tiny_run, out, repo_id="me/dala-tiny")


def test_hub_run_record_for_the_compare_page(tmp_path, tiny_run):
    from dala.hub import hub_run_record, prepare_upload

    up = prepare_upload(tiny_run, tmp_path / "up", repo_id="me/x")
    cache = tmp_path / "hub"
    commit = make_hub_cache(cache, "me/x", {f"40X/{p.name}": p for p in up.iterdir()})
    rec = hub_run_record("me/x", subfolder="40X", cache_dir=cache)
    assert rec["name"] == f"hub:me/x/40X@{commit[:7]}" and rec["commit"] == commit
    assert rec["report"] == json.loads((up / "report.json").read_text())
    assert rec["config"]["model"] == "tiny_cnn" and rec["epochs"] and rec["epochs"][0]["kind"] == "epoch"
    make_hub_cache(cache, "me/bare", {f"{p.name}": p for p in up.iterdir() if p.name in ("model.safetensors", "config.json")})
    with pytest.raises(HubError, match="no report.json"):
        hub_run_record("me/bare", cache_dir=cache)


def test_card_names_the_hub_dataset(tmp_path, tiny_run):
    from dala.hub import prepare_upload

    out = prepare_upload(tiny_run, tmp_path / "u", repo_id="me/x", dataset_id="someone/breakhis", license="mit")
    meta = _front_matter((out / "README.md").read_text())
    assert meta["datasets"] == ["someone/breakhis"] and meta["license"] == "mit"


def test_cli_push_dry_run_and_offline_push(tmp_path, tiny_run):
    from dala.cli import main
    from dala.hub import push_run

    assert main(["hub", "push", str(tiny_run), "--repo", "me/dala-tiny", "--dry-run", str(tmp_path / "dry")]) == 0
    assert (tmp_path / "dry" / "README.md").is_file()
    t0 = time.perf_counter()
    with pytest.raises(HubError, match="--dry-run"):
        push_run(tiny_run, "me/dala-tiny")
    assert time.perf_counter() - t0 < 5
    assert main(["hub", "push", str(tiny_run), "--repo", "me/dala-tiny"]) == 2


def test_push_run_sends_the_prepared_folder(tmp_path, tiny_run, monkeypatch):
    import huggingface_hub

    import dala.hub as hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def create_branch(self, repo_id, **kw):
            calls.append(("create_branch", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", sorted(p.name for p in Path(kw["folder_path"]).iterdir()), kw))

            class Info:
                commit_url = f"https://huggingface.co/{kw['repo_id']}/commit/abc"
            return Info()

    monkeypatch.setattr("dala.net.hub_offline_reason", lambda: None)  # online, as far as the gate knows
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = hub.push_run(tiny_run, "me/dala-tiny", token="t0k", revision="exp", private=True, subfolder="40X")
    assert url == "https://huggingface.co/me/dala-tiny/commit/abc"
    assert calls[0] == ("init", "t0k")
    assert calls[1] == ("create_repo", "me/dala-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[2][0] == "create_branch" and calls[2][2]["branch"] == "exp"
    name, files, kw = calls[3]
    assert name == "upload_folder" and "README.md" in files and "model.safetensors" in files
    assert kw["path_in_repo"] == "40X" and kw["revision"] == "exp" and kw["repo_id"] == "me/dala-tiny"


def test_push_refuses_an_unfinished_run(tmp_path, tiny_run):
    import shutil

    from dala.hub import prepare_upload

    run = tmp_path / "unfinished"
    shutil.copytree(tiny_run, run)
    (run / "report.json").unlink()
    with pytest.raises(RunError, match="not finished"):
        prepare_upload(run, tmp_path / "u", repo_id="me/x")
    with pytest.raises(RunError, match="does not exist"):
        prepare_upload(tmp_path / "nope", tmp_path / "u", repo_id="me/x")
    assert not (tmp_path / "u").exists()


def test_leaderboard_accepts_a_real_run(tiny_run):
    from dala.hosting import read_leaderboard, submit_to_leaderboard

    entry = submit_to_leaderboard(tiny_run, nickname="Ada")
    assert entry["data_source"] == "synthetic" and "synthetic" in entry["data_label"]
    assert entry["model"] == "tiny_cnn" and entry["split_mode"] == "patient"
    assert entry["metrics"]["gmean"] is not None and entry["metrics"]["f1_macro"] is not None
    assert any(e["id"] == entry["id"] for e in read_leaderboard())


# ---------------------------------------------------------------------------------------------
# datasets from the Hub and safe extraction
# ---------------------------------------------------------------------------------------------

def _tar_of(root: Path, mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        tf.add(root, arcname="breakhis")
    return buf.getvalue()


def _zip_of(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(root.rglob("*")):
            zf.write(p, "breakhis/" + p.relative_to(root).as_posix())
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_fetch_dataset_extracts_archives_for_the_index(tmp_path, tiny_synth_root, tiny_index, kind):
    from dala.data.index import load_index
    from dala.hub import SOURCE_MARKER, fetch_dataset

    cache = tmp_path / "hub"
    data = _tar_of(tiny_synth_root) if kind == "tar.gz" else _zip_of(tiny_synth_root)
    commit = make_hub_cache(cache, "someone/breakhis", {f"data/breakhis.{kind}": data, "README.md": b"# BreakHis\n"},
                            repo_type="dataset")
    dest = tmp_path / "datasets" / "bh"
    root = fetch_dataset("someone/breakhis", cache_dir=cache, dest=dest)
    assert root == dest / "breakhis"  # the archive's lone top folder, where the SYNTHETIC marker is
    index = load_index(root)
    assert len(index) == len(tiny_index) and set(index["source"]) == {"synthetic"}
    marker = json.loads((dest / SOURCE_MARKER).read_text())
    assert marker["repo_id"] == "someone/breakhis" and marker["commit"] == commit
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    # a second call finds it extracted and does no work
    assert fetch_dataset("someone/breakhis", cache_dir=cache, dest=dest) == root


def test_fetch_dataset_without_archives_returns_the_snapshot(tmp_path, tiny_synth_root):
    from dala.data.index import load_index
    from dala.hub import fetch_dataset

    files = {p.relative_to(tiny_synth_root).as_posix(): p for p in tiny_synth_root.rglob("*") if p.is_file()}
    cache = tmp_path / "hub"
    commit = make_hub_cache(cache, "someone/bh-tree", files, repo_type="dataset")
    root = fetch_dataset("someone/bh-tree", cache_dir=cache)
    assert root.name == commit and len(load_index(root)) > 0


def _hostile_tars(outside: Path) -> dict[str, bytes]:
    def tar(members) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            ok = tarfile.TarInfo("breakhis/ok.txt")
            ok.size = 2
            tf.addfile(ok, io.BytesIO(b"ok"))
            for info, payload in members:
                tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
        return buf.getvalue()

    def reg(name: str, payload: bytes = b"evil"):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        return info, payload

    def link(name: str, target: str, type_=tarfile.SYMTYPE):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = type_, target
        return info, None

    dev = tarfile.TarInfo("breakhis/null")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    return {
        "dotdot": tar([reg("../../evil.txt")]),
        "absolute": tar([reg(str(outside / "abs_evil.txt"))]),
        "symlink_out": tar([link("breakhis/link", "../../../outside"), reg("breakhis/link/evil.txt")]),
        "symlink_abs": tar([link("breakhis/etc", str(outside))]),
        "hardlink_out": tar([link("breakhis/hl", str(outside / "victim.txt"), tarfile.LNKTYPE)]),
        "device": tar([(dev, None)]),
    }


def _hostile_zips(outside: Path) -> dict[str, bytes]:
    def zipped(name: str, payload: bytes = b"evil", mode: int | None = None) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("breakhis/ok.txt", b"ok")
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, payload)
        return buf.getvalue()

    return {
        "dotdot": zipped("../../evil.txt"),
        "absolute": zipped(str(outside / "abs_evil.txt")),
        "backslash": zipped("..\\..\\evil.txt"),
        "drive": zipped("C:/evil.txt"),
        "symlink": zipped("breakhis/link", str(outside).encode(), stat.S_IFLNK | 0o777),
    }


def _snapshot_outside(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_hostile_archives_are_refused_and_write_nothing_outside(tmp_path, kind):
    from dala.hub import UnsafeArchiveError, fetch_dataset, safe_extract

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("keep me")
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    archives = _hostile_tars(outside) if kind == "tar" else _hostile_zips(outside)
    for name, data in archives.items():
        before = _snapshot_outside(tmp_path)
        cache = work / f"hub-{name}"
        ext = "tar.gz" if kind == "tar" else "zip"
        make_hub_cache(cache, "evil/ds", {f"x.{ext}": data}, repo_type="dataset")
        dest = work / f"dest-{name}"
        with pytest.raises((UnsafeArchiveError, DataError, HubError)) as err:
            fetch_dataset("evil/ds", cache_dir=cache, dest=dest)
        assert isinstance(err.value, DalaError) and "refusing" in str(err.value), (name, err.value)
        assert not dest.exists(), name
        after = _snapshot_outside(tmp_path)
        new = {p for p in after - before if not p.startswith(str(cache))}
        assert not new, (name, new)
        assert (outside / "victim.txt").read_text() == "keep me"
        assert not list(tmp_path.rglob("evil.txt")) and not list(tmp_path.rglob("abs_evil.txt"))
        # direct use of the extractor: the same refusal, the target stays empty
        target = work / f"direct-{name}"
        target.mkdir()
        archive = work / f"{name}.{ext}"
        archive.write_bytes(data)
        with pytest.raises(UnsafeArchiveError):
            safe_extract(archive, target)
        assert not any(target.iterdir()), name


def test_damaged_archive_is_a_data_error(tmp_path):
    from dala.hub import UnsafeArchiveError, safe_extract

    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    (tmp_path / "t").mkdir()
    with pytest.raises(DataError, match="damaged") as err:
        safe_extract(bad, tmp_path / "t")
    assert not isinstance(err.value, UnsafeArchiveError)


def test_extraction_limits_are_read_at_call_time(tmp_path, monkeypatch):
    """DALA_MAX_EXTRACT_GB / DALA_MAX_EXTRACT_MEMBERS set after import still apply (they were
    read once at import before)."""
    import dala.hub as hub
    from dala.hub import UnsafeArchiveError, safe_extract

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"breakhis/f{i}.bin")
            info.size = 4096
            tf.addfile(info, io.BytesIO(b"\0" * 4096))
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(buf.getvalue())
    zipped = tmp_path / "a.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for i in range(3):
            zf.writestr(f"breakhis/f{i}.bin", b"\0" * 4096)
    monkeypatch.delenv("DALA_MAX_EXTRACT_GB", raising=False)
    monkeypatch.delenv("DALA_MAX_EXTRACT_MEMBERS", raising=False)
    assert hub.max_extract_bytes() == 20 * 1024**3 and hub.max_extract_members() == 500_000
    for name, value in (("DALA_MAX_EXTRACT_GB", str(8000 / 1024**3)), ("DALA_MAX_EXTRACT_MEMBERS", "2")):
        monkeypatch.setenv(name, value)
        for src in (archive, zipped):
            target = tmp_path / f"t-{name}-{src.suffix}"
            target.mkdir()
            with pytest.raises(UnsafeArchiveError, match="would unpack to more than"):
                safe_extract(src, target)
            assert not any(target.iterdir())
        monkeypatch.delenv(name)
    for src in (archive, zipped):
        target = tmp_path / f"ok-{src.suffix}"
        target.mkdir()
        safe_extract(src, target)
        assert len(list((target / "breakhis").iterdir())) == 3
