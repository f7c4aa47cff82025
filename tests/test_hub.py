"""Checkpoints from the Hugging Face Hub (``hf://``), offline: files written into a local Hub cache.

No test touches the network: ``HF_HUB_OFFLINE=1`` and ``HF_ENDPOINT`` pointing at a closed local port,
so a lookup that tried to go online would fail, not download.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

import mambaad
from mambaad.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mambaad.cli import main
from mambaad.hub import HubError, HubFile, is_hub_uri, parse, resolve

from .datagen import tiny_mvtec  # noqa: F401
from .model_helpers import one_thread, seeded_model  # noqa: F401
from .test_checkpoint_load import _authors_state_dict

pytest.importorskip("huggingface_hub")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def put_in_cache(cache, repo_id: str, filename: str, payload: object, commit: str,
                 refs: tuple[str, ...] = ("main",)) -> str:
    """Write ``payload`` (``torch.save``) as ``filename`` of ``repo_id`` at ``commit`` into a Hub cache
    folder, laid out as ``huggingface_hub`` writes it: ``models--<owner>--<name>/blobs/<sha256>``,
    ``snapshots/<commit>/<filename>`` (a relative link to the blob) and ``refs/<ref>`` (the commit)."""
    top = os.path.join(str(cache), "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(top, "blobs"), exist_ok=True)
    tmp = os.path.join(top, "blobs", "incoming")
    torch.save(payload, tmp)
    with open(tmp, "rb") as f:
        blob = os.path.join(top, "blobs", hashlib.sha256(f.read()).hexdigest())
    os.replace(tmp, blob)
    link = os.path.join(top, "snapshots", commit, filename)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    for ref in refs:
        os.makedirs(os.path.join(top, "refs", os.path.dirname(ref)), exist_ok=True)
        with open(os.path.join(top, "refs", ref), "w") as f:
            f.write(commit)
    return link


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache as HF_HUB_CACHE, offline, with an endpoint that refuses connections."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return cache


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_parse_forms():
    assert parse("hf://Lewandofski/MambaAD/mvtec/mambaad_mvtec.pth") == \
        HubFile("Lewandofski/MambaAD", "mvtec/mambaad_mvtec.pth")
    assert parse(f"hf://o/r@{COMMIT_A}/x.pth") == HubFile("o/r", "x.pth", COMMIT_A)
    assert parse("hf://o/r@refs%2Fpr%2F3/d/x.pth") == HubFile("o/r", "d/x.pth", "refs/pr/3")
    assert parse("hf://datasets/o/r/x.pth") == HubFile("o/r", "x.pth", None, "dataset")
    assert parse("hf://models/o/r/x.pth") == HubFile("o/r", "x.pth")
    # the file viewer's address, as the authors' README links it
    assert parse("https://huggingface.co/Lewandofski/MambaAD/blob/main/visa/mambaad_visa.pth") == \
        HubFile("Lewandofski/MambaAD", "visa/mambaad_visa.pth", "main")
    assert parse("https://huggingface.co/o/r/resolve/v1/x.pth?download=true") == HubFile("o/r", "x.pth", "v1")
    for uri in ("hf://o/r@refs%2Fpr%2F3/d/x.pth", "hf://datasets/o/r/x.pth", "hf://o/r/x.pth"):
        assert parse(parse(uri).uri) == parse(uri)
    for bad in ("hf://o/r", "hf://o//x.pth", "hf://o/r@/x.pth", "https://huggingface.co/o/r/tree/main/x"):
        with pytest.raises(HubError, match="hf://|huggingface.co|revision"):
            parse(bad)
    assert is_hub_uri("hf://o/r/x") and not is_hub_uri("runs/last.pt") and not is_hub_uri(None)
    assert resolve("runs/last.pt") == "runs/last.pt"  # local paths pass through


@pytest.mark.parametrize("naming", ["official", "ader"])
def test_load_pretrained_from_hub_offline(naming, offline_hub):
    src = seeded_model("mambaad_test", 0, dims=(512, 256, 128, 64), depths=(1, 4, 1, 1))
    authors, _ = _authors_state_dict(src, naming)
    put_in_cache(offline_hub, "Lewandofski/MambaAD", "mvtec/mambaad_mvtec.pth", {"net": authors}, COMMIT_A)
    dst = seeded_model("mambaad_test", 1, dims=(512, 256, 128, 64), depths=(1, 4, 1, 1))
    assert not _same_weights(src, dst)
    result = mambaad.load_pretrained(dst, "hf://Lewandofski/MambaAD/mvtec/mambaad_mvtec.pth")
    assert not result.missing_keys and not result.unexpected_keys
    assert _same_weights(src, dst)


def test_revision_and_missing_files(offline_hub):
    a, b = seeded_model("mambaad_test", 0), seeded_model("mambaad_test", 1)
    put_in_cache(offline_hub, "o/r", "w.pth", a.state_dict(), COMMIT_A, refs=("main",))
    put_in_cache(offline_hub, "o/r", "w.pth", b.state_dict(), COMMIT_B, refs=("v2",))
    model = seeded_model("mambaad_test", 2)
    mambaad.load_pretrained(model, "hf://o/r/w.pth")  # main
    assert _same_weights(model, a)
    mambaad.load_pretrained(model, "hf://o/r@v2/w.pth")  # a tag
    assert _same_weights(model, b)
    mambaad.load_pretrained(model, f"hf://o/r@{COMMIT_B}/w.pth", revision=COMMIT_A)  # the argument wins
    assert _same_weights(model, a)
    with pytest.raises(HubError, match=r"hf://o/r@v3/w\.pth: offline mode \(HF_HUB_OFFLINE\)"):
        mambaad.load_pretrained(model, "hf://o/r@v3/w.pth")
    with pytest.raises(HubError, match="not in"):
        resolve("hf://o/other/w.pth")
    with pytest.raises(FileNotFoundError):  # HubError is one: the CLI reports it as a missing file
        load_checkpoint("hf://o/r/missing.pth")


def test_load_checkpoint_ours_from_hub(offline_hub):
    model = seeded_model("mambaad_test", 0)
    local = offline_hub / "ours.pt"
    save_checkpoint(str(local), {"model_name": "mambaad_test", "model_config": dataclasses.asdict(model.config),
                                 "state_dict": model.state_dict(), "image_size": 64})
    with open(local, "rb") as f:
        payload = torch.load(f, weights_only=True)
    put_in_cache(offline_hub, "me/runs", "exp1/last.pt", payload, COMMIT_A)
    ckpt = load_checkpoint("hf://me/runs/exp1/last.pt")
    assert ckpt["model_name"] == "mambaad_test" and "converted_from" not in ckpt


def test_released_weights_read_as_a_checkpoint(offline_hub, tiny_mvtec, tmp_path, capsys):
    """The authors' release (paper model, official naming, under 'net') through ``--checkpoint hf://``:
    evaluated at 64 x 64 (the encoder's ImageNet weights are random here: the numbers are not the
    paper's), thresholds stored beside the output, not in the Hub cache."""
    torch.manual_seed(0)
    paper = mambaad.create_model("mambaad")
    authors, _ = _authors_state_dict(paper, "official")
    uri = "hf://Lewandofski/MambaAD/mvtec/mambaad_mvtec.pth"
    blob_link = put_in_cache(offline_hub, "Lewandofski/MambaAD", "mvtec/mambaad_mvtec.pth", {"net": authors},
                             COMMIT_A)
    before = os.path.getmtime(os.path.realpath(blob_link))
    ckpt = load_checkpoint(uri)
    assert ckpt["model_name"] == "mambaad" and ckpt["image_size"] == 256 and ckpt["converted_from"] == uri
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in paper.state_dict().items())
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", uri, "--root", tiny_mvtec, "--dataset", "mvtec", "--categories",
                 "disc", "--image-size", "64", "--workers", "0", "--output", str(out)]) == 0
    assert "stored the F1-max thresholds in " + str(out / "checkpoint.pt") in capsys.readouterr().err
    stored = load_checkpoint(str(out / "checkpoint.pt"))
    assert "disc" in stored["thresholds"]["image"] and "converted_from" not in stored
    assert os.path.getmtime(os.path.realpath(blob_link)) == before
    with open(out / "metrics.json") as f:
        assert set(json.load(f)) == {"disc", "mean"}
    # weights of another configuration are refused by name, through the CLI too
    put_in_cache(offline_hub, "o/tiny", "w.pth", _authors_state_dict(
        seeded_model("mambaad_test", 0, dims=(512, 256, 128, 64), depths=(1, 4, 1, 1)), "ader")[0], COMMIT_A)
    with pytest.raises(CheckpointError, match="do not fit the paper's model 'mambaad'"):
        load_checkpoint("hf://o/tiny/w.pth")
    assert main(["predict", "--checkpoint", "hf://o/absent/w.pth", "--output", str(tmp_path / "p"),
                 str(tmp_path)]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_imports_need_no_optional_package():
    """``import mambaad`` / ``mambaad_kernels`` never import anomalib or Lightning, and work with
    huggingface_hub and anomalib absent (imports blocked); an hf:// load then names the extra."""
    code = (
        "import sys\n"
        "for name in ('huggingface_hub', 'anomalib', 'lightning'):\n"
        "    sys.modules[name] = None\n"
        "import mambaad, mambaad_kernels, mambaad.hub, mambaad.checkpoint\n"
        "model = mambaad.create_model('mambaad_test')\n"
        "try:\n"
        "    mambaad.load_pretrained(model, 'hf://o/r/w.pth')\n"
        "except mambaad.hub.HubError as err:\n"
        "    print('HubError:', err)\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "pip install 'mambaad[hub]'" in res.stdout
    # installed: mambaad_kernels imports neither; mambaad imports no anomalib / Lightning (huggingface_hub
    # it may: timm, a requirement, imports it when it is installed)
    plain = ("import sys, mambaad_kernels\n"
             "print('huggingface_hub' in sys.modules, 'anomalib' in sys.modules)\n"
             "import mambaad, mambaad.hub, mambaad.checkpoint\n"
             "print(sorted(m for m in ('anomalib', 'lightning') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["False False", "[]"], res.stdout
