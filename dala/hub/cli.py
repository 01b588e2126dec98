"""``python -m dala hub push | pull | ls | fetch-dataset``: the Hugging Face Hub from the command line.

Import-light on purpose (``python -m dala --help`` stays instant): the work modules of
``dala.hub`` and huggingface_hub are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    hub = sub.add_parser("hub", help="push checkpoints to / pull them from the Hugging Face Hub",
                         description="Checkpoints on the Hugging Face Hub: push a run (checkpoint + model card), "
                                     "pull a checkpoint (offline-first from the local cache), list a repo's "
                                     "checkpoints, fetch a BreakHis dataset repo. Default repo: $DALA_HUB_REPO or "
                                     "hub.repo_id in $DALA_HOME/config.toml or ~/.config/dala/config.toml.")
    hs = hub.add_subparsers(dest="hub_command", metavar="HUB_COMMAND")

    p = hs.add_parser("push", help="upload a run's best checkpoint with a model card",
                      description="Upload RUN's checkpoints/best (model.safetensors + config.json), a model card "
                                  "(README.md with metrics, curves, data and split, limits), report.json, "
                                  "split.json and metrics.jsonl. --dry-run DIR writes that folder and sends nothing.")
    p.add_argument("run", metavar="RUN", help="run folder (written by `python -m dala train`)")
    p.add_argument("--repo", help="model repo id, owner/name (default: $DALA_HUB_REPO / config)")
    p.add_argument("--dry-run", metavar="DIR", help="only write the upload folder to DIR (new or empty)")
    p.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    p.add_argument("--subfolder", help="folder in the repo, e.g. 40X for one checkpoint per magnification")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`)")
    p.add_argument("--dataset-id", help="Hub dataset id to name in the card's metadata")
    p.add_argument("--license", default=None, help="card license id (default cc-by-nc-4.0)")
    p.set_defaults(func=_push)

    q = hs.add_parser("pull", help="get a checkpoint folder (offline-first) and print where it is",
                      description="Resolve REPO's checkpoint from the local Hub cache, or download it. Prints the "
                                  "folder (pass it to --checkpoint) and the commit it resolved to (pass that as "
                                  "--revision to pin it).")
    q.add_argument("repo", metavar="ID", nargs="?", help="model repo id (default: $DALA_HUB_REPO / config)")
    q.add_argument("--revision", default="main", help="branch, tag or commit hash (default main)")
    q.add_argument("--subfolder", help="checkpoint folder in the repo (see `hub ls`)")
    q.add_argument("--cache-dir", help="Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub)")
    q.add_argument("--refresh", action="store_true", help="ask the Hub first even if a copy is cached")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(func=_pull)

    ls = hs.add_parser("ls", help="list the checkpoint folders a repo offers",
                       description="Folders of the repo holding model.safetensors + config.json ('.' = the root). "
                                   "Offline, lists the cached snapshot.")
    ls.add_argument("repo", metavar="ID", nargs="?", help="model repo id (default: $DALA_HUB_REPO / config)")
    ls.add_argument("--revision", help="branch, tag or commit hash (default main)")
    ls.add_argument("--cache-dir")
    ls.set_defaults(func=_ls)

    f = hs.add_parser("fetch-dataset", help="download a BreakHis dataset repo and extract its archives safely",
                      description="Download a Hub dataset repo (offline-first) and extract any .zip/.tar(.gz) "
                                  "archives safely; prints the folder to pass as --data.")
    f.add_argument("repo", metavar="ID", nargs="?", help="dataset repo id (default: $DALA_HUB_DATASET / config)")
    f.add_argument("--revision")
    f.add_argument("--dest", help="folder to extract into (default $DALA_HOME/hub_datasets/<repo>/<commit>)")
    f.add_argument("--cache-dir")
    f.set_defaults(func=_fetch)

    from dala.study.publish import register_push_study  # push-study: a study's checkpoints (dala.study)

    register_push_study(hs)

    hub.set_defaults(func=lambda args: (hub.print_help(), 2)[1])


def _repo(args, *, dataset: bool = False) -> str:
    from dala.errors import HubError
    from dala.hub import default_dataset_id, default_repo_id

    rid = getattr(args, "repo", None) or (default_dataset_id() if dataset else default_repo_id())
    if not rid:
        var = "DALA_HUB_DATASET" if dataset else "DALA_HUB_REPO"
        raise HubError(f"no repo id given: pass one (owner/name) or set {var}")
    return rid


def _push(args) -> int:
    from dala.hub import DEFAULT_LICENSE, push_run

    out = push_run(args.run, _repo(args), token=args.token, revision=args.revision, private=args.private,
                   subfolder=args.subfolder, dry_run_dir=args.dry_run, dataset_id=args.dataset_id,
                   license=args.license or DEFAULT_LICENSE)
    if args.dry_run:
        print(f"upload folder written (nothing sent): {out}")
    else:
        print(f"pushed: {out}")
    return 0


def _pull(args) -> int:
    from dala.hub import pull

    res = pull(_repo(args), revision=args.revision, subfolder=args.subfolder, cache_dir=args.cache_dir,
               refresh=args.refresh)
    if args.json:
        print(json.dumps(res.as_dict(), indent=2))
    else:
        where = "local cache" if res.from_cache else "downloaded"
        print(f"{res.folder}")
        print(f"# {res.repo_id}@{res.revision} -> commit {res.commit} ({where}); "
              f"pin with --revision {res.commit}")
    return 0


def _ls(args) -> int:
    from dala.hub import list_checkpoints

    folders = list_checkpoints(_repo(args), revision=args.revision, cache_dir=args.cache_dir)
    if not folders:
        print("no checkpoint folders (model.safetensors + config.json) found")
        return 1
    for folder in folders:
        print(folder or ".")
    return 0


def _fetch(args) -> int:
    from dala.hub import fetch_dataset

    print(fetch_dataset(_repo(args, dataset=True), revision=args.revision, cache_dir=args.cache_dir, dest=args.dest))
    return 0
