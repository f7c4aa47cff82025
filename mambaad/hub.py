"""Checkpoints on the Hugging Face Hub: ``hf://`` URIs resolved to local files through ``huggingface_hub``.

A URI names one file of a Hub repository, in the Hub's own canonical form::

    hf://[models/|datasets/|spaces/]<owner>/<repo>[@<revision>]/<path/in/repo>

e.g. ``hf://Lewandofski/MambaAD/mvtec/mambaad_mvtec.pth`` (the authors' MVTec-AD weights) or
``hf://Lewandofski/MambaAD@<commit>/mvtec/mambaad_mvtec.pth`` (pinned to a commit). A revision holding
``/`` is written URL-encoded (``@refs%2Fpr%2F3``). The file viewer's web address
(``https://huggingface.co/<owner>/<repo>/blob/<revision>/<path>``, also ``resolve/``) is accepted too.

:func:`resolve` downloads through :func:`huggingface_hub.hf_hub_download`, so the Hub's cache applies
(``HF_HUB_CACHE`` / ``HF_HOME``, default ``~/.cache/huggingface/hub``; a file already there is not
fetched again), and so do its token (``HF_TOKEN`` or ``hf auth login``) and endpoint. Offline
(``HF_HUB_OFFLINE=1`` or ``offline=True``) only the cache is read: a file missing there raises
:class:`HubError` without touching the network. The environment is read at each call, not when
``huggingface_hub`` was imported.

``huggingface_hub`` is imported inside :func:`resolve` only: importing :mod:`mambaad` or this module
never imports it (it is the optional extra ``mambaad[hub]``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote

SCHEME = "hf://"
WEB_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "https://hf.co/")
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_WEB_ROUTES = ("blob", "resolve")
_TRUE = ("1", "true", "yes", "on")


class HubError(FileNotFoundError):
    """An ``hf://`` file that cannot be had: a malformed URI, ``huggingface_hub`` not installed, a file
    missing from the cache in offline mode, or a repository, revision or file the Hub does not have.
    The message names the URI and what to do."""


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repository.

    Attributes:
        repo_id: ``owner/name``. filename: the path inside the repository.
        revision: a branch, tag or commit (None: the default branch, ``main``).
        repo_type: ``model``, ``dataset`` or ``space``.
    """

    repo_id: str
    filename: str
    revision: str | None = None
    repo_type: str = "model"

    @property
    def uri(self) -> str:
        """The canonical ``hf://`` form (the type prefix only for non-model repositories)."""
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        rev = "" if self.revision is None else "@" + self.revision.replace("/", "%2F")
        return f"{SCHEME}{prefix}{self.repo_id}{rev}/{self.filename}"


def is_hub_uri(path: object) -> bool:
    """Whether ``path`` is a string naming a Hub file (``hf://...`` or a huggingface.co file address)."""
    return isinstance(path, str) and path.startswith((SCHEME,) + WEB_PREFIXES)


def _web_to_parts(address: str) -> list[str]:
    """``https://huggingface.co/[datasets/]<owner>/<repo>/{blob,resolve}/<rev>/<path>`` -> URI parts."""
    rest = address.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0].split("#", 1)[0]
    parts = rest.split("/")
    head = 3 if parts and parts[0] in _TYPES else 2  # [type/]owner/repo
    if len(parts) < head + 3 or parts[head] not in _WEB_ROUTES:
        raise HubError(f"{address}: a Hugging Face file address reads https://huggingface.co/<owner>/<repo>/"
                       "blob/<revision>/<path> (or resolve/ instead of blob/)")
    return parts[:head - 1] + [f"{parts[head - 1]}@{parts[head + 1]}"] + parts[head + 2:]


def parse(uri: str) -> HubFile:
    """Split a Hub file URI (see the module docstring).

    Raises:
        HubError: not of that form (the message gives the form).
    """
    if not is_hub_uri(uri):
        raise HubError(f"{uri!r} is not an hf:// URI")
    parts = _web_to_parts(uri) if uri.startswith(WEB_PREFIXES) else uri[len(SCHEME):].split("/")
    repo_type = "model"
    if parts and parts[0] in _TYPES:
        repo_type = _TYPES[parts.pop(0)]
    if len(parts) < 3 or not all(parts):
        raise HubError(f"{uri}: an hf:// checkpoint reads hf://<owner>/<repo>[@<revision>]/<path/in/repo>, "
                       "e.g. hf://Lewandofski/MambaAD/mvtec/mambaad_mvtec.pth")
    owner, repo, path = parts[0], parts[1], "/".join(parts[2:])
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        revision = unquote(revision)
        if not repo or not revision:
            raise HubError(f"{uri}: empty repository name or revision around '@'")
    return HubFile(f"{owner}/{repo}", path, revision, repo_type)


def offline_mode() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for the cache only (read now, from the environment)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def cache_dir() -> str | None:
    """The Hub cache folder the environment names now (``HF_HUB_CACHE``, else ``HF_HOME/hub``), or
    None for ``huggingface_hub``'s default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def resolve(path: str | os.PathLike, *, revision: str | None = None, offline: bool | None = None,
            cache: str | os.PathLike | None = None) -> str:
    """The local path of a checkpoint: a Hub file is fetched into (or found in) the Hub cache; any
    other path is returned unchanged.

    Args:
        path: a local path, an ``hf://`` URI or a huggingface.co file address.
        revision: branch, tag or commit; overrides the URI's ``@revision`` (None: the URI's, else
            ``main``).
        offline: read the cache only; None: as ``HF_HUB_OFFLINE`` says.
        cache: the cache folder; None: as ``HF_HUB_CACHE`` / ``HF_HOME`` say, else the default.

    Returns:
        A local file path (inside the Hub cache for a Hub file).

    Raises:
        HubError: the file cannot be had (see :class:`HubError`).
    """
    if not is_hub_uri(path):
        return os.fspath(path)
    ref = parse(str(path))
    if revision is not None:
        ref = HubFile(ref.repo_id, ref.filename, revision, ref.repo_type)
    offline = offline_mode() if offline is None else offline
    try:
        import huggingface_hub
        from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError as err:
        raise HubError(f"{path}: loading from the Hugging Face Hub needs the huggingface_hub package "
                       "(pip install 'mambaad[hub]')") from err
    folder = cache if cache is not None else cache_dir()
    try:
        return huggingface_hub.hf_hub_download(ref.repo_id, ref.filename, repo_type=ref.repo_type,
                                               revision=ref.revision, cache_dir=folder,
                                               local_files_only=offline, library_name="mambaad")
    except LocalEntryNotFoundError as err:  # offline (or no connection) and not in the cache
        why = "offline mode (HF_HUB_OFFLINE)" if offline else "the Hub cannot be reached"
        raise HubError(f"{ref.uri}: {why} and the file is not in {folder or 'the default Hub cache'}; fetch "
                       "it once online, or set HF_HUB_CACHE to the cache that holds it") from err
    except RevisionNotFoundError as err:
        raise HubError(f"{ref.uri}: the repository {ref.repo_id} has no revision {ref.revision!r}") from err
    except RepositoryNotFoundError as err:
        raise HubError(f"{ref.uri}: no repository {ref.repo_id} on the Hub (or it is private: set "
                       "HF_TOKEN)") from err
    except EntryNotFoundError as err:
        raise HubError(f"{ref.uri}: the repository {ref.repo_id} has no file {ref.filename!r} at revision "
                       f"{ref.revision or 'main'}") from err
