"""Where bases come from: the Hugging Face Hub (pull, push, dataset card) and per-model configuration.

`core.artifacts.store` owns the artifact format and its checks. This module pins
revisions, calls `huggingface_hub` and turns its exceptions into `BasesError`s
that say what to do. `huggingface_hub` is imported inside the functions: it
reads `HF_HUB_OFFLINE` and `HF_HUB_CACHE` once, at import, so importing `core`
must not freeze them.

    source = resolve_bases_source("ViT-B-16/laion2b_s34b_b88k")   # "org/name@<sha>" or a folder
    folder = pull_artifact("org/clip-bases", "0123...abcd")        # cache first, then the network
    bases = load_bases(source, expect_model=bundle.info.identity())  # a folder or a Hub repo, verified
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from core import guards, settings
from core.artifacts.card import dataset_card
from core.artifacts.store import CARD, MANIFEST, SECTIONS, Artifact, load_artifact, read_manifest, verify_artifact
from core.errors import BasesError, ConfigError

ENV_VAR = "CLIPSCOPE_BASES"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# model spec -> folder relative to PROJECT_ROOT, or "org/name@<sha>". The toy model's bases ship in the repo.
DEFAULT_BASES: dict[str, str] = {"toy": "core/data/toy/bases", "toy-biased": "core/data/toy_biased/bases",
                                 "toy-biased-2": "core/data/toy_biased_2/bases"}
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
REPO_SOURCE = re.compile(r"[\w-][\w.-]*/[\w.-]+(@[\w./-]+)?")  # ORG/NAME[@REVISION]
BUILD_HINT = (
    "build them locally with `python -m core bases build --model SPEC --images DIR --texts FILE --out DIR` "
    "and point CLIPSCOPE_BASES (or the --bases option) at that folder, or copy a Hugging Face cache that holds them"
)


# ---------------------------------------------------------------- configuration

def resolve_bases_source(model_spec: str, cli_value: str | None = None) -> str | None:
    """Where the bases for `model_spec` come from: CLI flag, then $CLIPSCOPE_BASES, then DEFAULT_BASES.

    $CLIPSCOPE_BASES holds `SPEC=SOURCE` entries separated by ";"; a SOURCE
    without `SPEC=` applies to every model. A SOURCE is a folder or
    `org/name@sha` (Space variables arrive as the same environment variable).
    Returns None when nothing is configured.
    """
    if cli_value:
        return cli_value
    from_env = _source_from_env(settings.bases_sources(), model_spec)
    if from_env:
        return from_env
    default = DEFAULT_BASES.get(model_spec)
    if default and "@" not in default:
        return str(PROJECT_ROOT / default)  # shipped folders live in the repository
    return default


def _source_from_env(value: str, model_spec: str) -> str | None:
    per_model: dict[str, str] = {}
    every_model = None
    for entry in filter(None, (part.strip() for part in value.split(";"))):
        spec, has_spec, source = (part.strip() for part in entry.partition("="))
        if not has_spec:
            if every_model is not None:
                raise ConfigError(f"{ENV_VAR} has two sources without SPEC=: {every_model!r} and {entry!r}")
            every_model = entry
        elif not spec or not source or spec in per_model:
            raise ConfigError(f"{ENV_VAR} entry {entry!r} is malformed or repeated: expected SPEC=SOURCE "
                              "entries separated by ';'")
        else:
            per_model[spec] = source
    return per_model.get(model_spec, every_model)


# ---------------------------------------------------------------- loading

def load_bases(source: str | Path, *, expect_model: dict | None = None, revision: str | None = None,
               allow_unpinned: bool = False, cache_dir: str | Path | None = None) -> Artifact:
    """Open and verify bases from a local folder or a Hub dataset repo (`org/name@sha`, or `revision=`).

    A pulled snapshot is verified like a folder, its files allowed to resolve into the cache's blobs of
    that repo and nowhere else.
    """
    local = Path(source)
    if os.path.lexists(local):
        if revision:
            raise BasesError(f"{source} is a local folder; a revision applies only to Hub repos")
        return load_artifact(local, expect_model=expect_model)
    repo_id, pinned = split_repo_source(str(source))
    if revision and pinned and revision != pinned:
        raise BasesError(f"{source} names revision {pinned} but revision={revision} was also given")
    if not re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", repo_id):
        raise BasesError(f"no bases folder at {source}, and it is not a Hub repo id ORG/NAME@REVISION")
    folder = pull_artifact(repo_id, revision or pinned, cache_dir=cache_dir, allow_unpinned=allow_unpinned)
    return load_artifact(folder, expect_model=expect_model, within=cache_repo_folder(folder))


def model_bases(bundle, source: str | Path | None = None) -> Artifact:
    """The verified bases of a loaded model (a `core.engine.models.ClipBundle`): `source` (a folder or
    `ORG/NAME@SHA`), else `$CLIPSCOPE_BASES`, else the shipped ones (`toy`, `toy-biased`).

    The bases must have been built from this model (same spec and weights), else BasesError; BasesError too when
    none are configured, saying how to build them.
    """
    spec = bundle.info.spec
    resolved = resolve_bases_source(spec, str(source) if source is not None else None)
    if resolved is None:
        raise BasesError(f"no bases are configured for model {spec}: {BUILD_HINT}")
    return load_bases(resolved, expect_model=bundle.info.identity())


def check_user_source(value: str) -> str:
    """A bases source a user typed: a Hub repo `ORG/NAME@REVISION`, or a folder checked by core.guards
    (refused in public mode, where only Hub repos and the shipped bases are read)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("no bases source given: a folder or a Hub repo ORG/NAME@REVISION")
    value = value.strip()
    if REPO_SOURCE.fullmatch(value) and (settings.public() or not os.path.lexists(value)):
        return value
    guards.check_user_path(value, "bases folder", hint="give a Hub dataset repo ORG/NAME@<commit sha>")
    return value


def cache_repo_folder(snapshot: Path) -> Path:
    """The repo folder of a Hugging Face cache snapshot (`.../datasets--org--name/snapshots/<sha>`), whose
    blobs/ its links point into; any other folder is its own root."""
    snapshot = Path(snapshot)
    return snapshot.parents[1] if snapshot.parent.name == "snapshots" else snapshot


# ---------------------------------------------------------------- pull and push

def pull_artifact(repo_id: str, revision: str | None, *, cache_dir: str | Path | None = None,
                  token: str | None = None, allow_unpinned: bool = False) -> Path:
    """Folder of dataset repo `repo_id` at a pinned `revision`, from the Hugging Face cache or downloaded.

    A pinned, fully cached snapshot is used without touching the network.
    Offline and uncached is a BasesError that says how to get the bases.
    Nothing is written except by huggingface_hub's own cache logic.
    """
    check_revision(repo_id, revision, allow_unpinned)
    if is_pinned(revision):
        try:
            folder = download_dataset(repo_id, revision, cache_dir=cache_dir, token=token, local_only=True)
            if _files_present(folder):
                return folder
        except FileNotFoundError:
            pass
    return download_dataset(repo_id, revision, cache_dir=cache_dir, token=token)


def _files_present(folder: Path) -> bool:
    """Every file the manifest lists exists with its size (cheap: a partial download fails this)."""
    try:
        files = read_manifest(folder, within=cache_repo_folder(folder))["files"]
        return all((folder / rel).is_file() and (folder / rel).stat().st_size == record["bytes"]
                   for rel, record in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def push_artifact(path: str | Path, repo_id: str, *, token: str | None = None, private: bool = False) -> str:
    """Verify the artifact at `path`, then upload it as Hub dataset repo `repo_id`; returns the commit sha."""
    path = Path(path)
    problems = verify_artifact(path, deep=True)  # contents too: never publish NaN tensors or unreadable tables
    if problems:
        raise BasesError(f"refusing to push {path}: " + "; ".join(problems))
    if not os.path.lexists(path / CARD):  # generated from the manifest, so recreating it loses nothing
        from core.writes import atomic_write_text

        atomic_write_text(path / CARD, dataset_card(path, read_manifest(path)), what="dataset card")
    elif (path / CARD).is_symlink() or not (path / CARD).is_file():  # never upload what a link points to
        raise BasesError(f"refusing to push {path}: {CARD} is a link or not a regular file")
    patterns = [MANIFEST, CARD, *(f"{section}/*" for section in SECTIONS)]
    return upload_dataset(path, repo_id, allow_patterns=patterns, token=token, private=private)


# ---------------------------------------------------------------- transport

def is_pinned(revision: str | None) -> bool:
    """True when `revision` is a full 40-hex commit sha (immutable, so cacheable forever)."""
    return bool(revision) and COMMIT_SHA.fullmatch(revision) is not None


def split_repo_source(source: str) -> tuple[str, str | None]:
    """Split `"org/name@revision"` into `("org/name", "revision")`; no `@` gives revision None."""
    repo_id, _, revision = source.partition("@")
    return repo_id, revision or None


def check_revision(repo_id: str, revision: str | None, allow_unpinned: bool) -> None:
    """Refuse a missing or moving revision unless `allow_unpinned`; warn when it is allowed."""
    if revision is None:
        raise BasesError(f"no revision given for bases repo {repo_id!r}: pin a 40-hex commit sha "
                         f"(`{repo_id}@<sha>`; see the repo's commit history on the Hub)")
    if is_pinned(revision):
        return
    if not allow_unpinned:
        raise BasesError(f"revision {revision!r} of bases repo {repo_id!r} is not a pinned 40-hex commit sha: "
                         "a branch or tag can change under you. Pass the commit sha, or allow_unpinned=True "
                         "(--allow-unpinned) to follow the branch")
    warnings.warn(f"bases {repo_id}@{revision} are not pinned to a commit: results may change when the repo does",
                  stacklevel=3)


def download_dataset(repo_id: str, revision: str, *, cache_dir: str | Path | None = None,
                     token: str | None = None, local_only: bool = False) -> Path:
    """Snapshot folder of dataset repo `repo_id` at `revision`, through huggingface_hub's cache.

    `local_only=True` never touches the network and raises `FileNotFoundError`
    when the snapshot is not cached. Otherwise huggingface_hub downloads what is
    missing, or falls back to the cache when offline; every failure becomes a
    `BasesError` naming the repo, the revision and the way out.
    """
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    try:
        folder = huggingface_hub.snapshot_download(repo_id, repo_type="dataset", revision=revision,
                                                   cache_dir=cache_dir, token=token, local_files_only=local_only)
    except hub_errors.LocalEntryNotFoundError as err:
        if local_only:
            raise FileNotFoundError(f"{repo_id}@{revision} is not in the local cache") from err
        raise BasesError(_offline_message(repo_id, revision, cache_dir, err)) from err
    except hub_errors.HFValidationError as err:
        raise BasesError(f"{repo_id!r} is not a valid Hub repo id (expected ORG/NAME): {err}") from err
    except hub_errors.RevisionNotFoundError as err:
        raise BasesError(f"revision {revision!r} does not exist in bases repo {repo_id!r}: "
                         "check the commit sha in the repo's history") from err
    except hub_errors.RepositoryNotFoundError as err:
        raise BasesError(f"no dataset repo {repo_id!r} on the Hub (or it is private or gated: log in with "
                         "`hf auth login` or pass a token). Check the id, or " + BUILD_HINT) from err
    except hub_errors.HfHubHTTPError as err:
        raise BasesError(f"the Hub refused {repo_id}@{revision}: {err}") from err
    return Path(folder)


def _offline_message(repo_id: str, revision: str, cache_dir, err: Exception) -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import IncompleteSnapshotError

    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    why = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
    partial = " (only partly: the download was interrupted)" if isinstance(err, IncompleteSnapshotError) else ""
    return (f"bases {repo_id}@{revision} are not in the local Hugging Face cache ({cache}){partial} and this machine "
            f"looks offline ({why}). Run `python -m core bases pull {repo_id} --revision {revision}` on a "
            f"connected machine, or {BUILD_HINT}")


def upload_dataset(folder: Path, repo_id: str, *, allow_patterns: list[str], token: str | None = None,
                   private: bool = False) -> str:
    """Create dataset repo `repo_id` if needed, upload the files of `folder` matching `allow_patterns`.

    Returns the new commit sha, the revision to pin when pulling.
    """
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=folder,
                                   allow_patterns=allow_patterns, commit_message="Upload clipscope bases")
    except hub_errors.HFValidationError as err:
        raise BasesError(f"{repo_id!r} is not a valid Hub repo id (expected ORG/NAME): {err}") from err
    except hub_errors.OfflineModeIsEnabled as err:
        raise BasesError(f"cannot push to {repo_id!r} while HF_HUB_OFFLINE=1 is set") from err
    except hub_errors.HfHubHTTPError as err:
        raise BasesError(f"could not push to {repo_id!r}: {err} (log in with `hf auth login` or pass a token "
                         "with write access)") from err
    return commit.oid
