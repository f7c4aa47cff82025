"""MambaAD in anomalib: ``Engine.fit / test / predict`` on generated data (CPU), the same maps as
``mambaad eval``'s for the same weights and images, anomalib's metrics against :mod:`mambaad.metrics`,
the multi-category datamodule, Hub weights, the optimiser recipe and the export errors.

The generated images and masks are written at the model's input size (64 x 64), so neither pipeline
resizes them: ``mambaad eval`` resizes with PIL and anomalib with torchvision's tensor resize, which
differ slightly (docs/anomalib.md gives the size of that difference).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

pytest.importorskip("anomalib")

from anomalib.data import Folder, MVTecAD  # noqa: E402
from anomalib.engine import Engine  # noqa: E402
from anomalib.metrics import AUPRO, AUROC  # noqa: E402

from mambaad import metrics  # noqa: E402
from mambaad.anomalib import ExportUnavailable, MambaAD, MultiCategory, evaluate_per_category  # noqa: E402
from mambaad.checkpoint import build_model, load_checkpoint  # noqa: E402
from mambaad.cli import main  # noqa: E402
from mambaad.data import build_test_sets  # noqa: E402
from mambaad.train import lr_at, param_groups  # noqa: E402
from tests.datagen import CATEGORIES, make_tiny_mvtec  # noqa: E402

from .model_helpers import FAST_BACKEND, one_thread  # noqa: E402, F401
from .test_checkpoint_load import _authors_state_dict  # noqa: E402
from .test_hub import COMMIT_A, offline_hub, put_in_cache  # noqa: E402, F401

SIZE = 64
MAX_REL_DIFF = 1e-5  # anomaly maps, anomalib against mambaad eval (the bound)
# anomalib's AUROC / AUPRO against mambaad.metrics on the same maps: both exact; anomalib accumulates in
# float32 (AUPRO's per-region cumulative sums over all pixels), mambaad.metrics in float64. Measured
# here: <= 3e-7 (docs/anomalib.md); the bound leaves room for other float32 summation orders.
METRIC_TOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")


@pytest.fixture(scope="module")
def data64(tmp_path_factory) -> str:
    """The generated MVTec-layout set, images resized to 64 x 64 (bilinear), masks nearest (binary)."""
    root = make_tiny_mvtec(str(tmp_path_factory.mktemp("tiny64")), n_train=8, n_good=3, n_defect=2)
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with Image.open(path) as im:
                mask = "ground_truth" in path
                im.resize((SIZE, SIZE), Image.NEAREST if mask else Image.BILINEAR).save(path)
    return root


def folder_datamodule(root: str, category: str, **kwargs) -> Folder:
    """anomalib's ``Folder`` over one category of the MVTec layout; validation = the test set."""
    base = os.path.join(root, category)
    return Folder(name=category, root=base, normal_dir="train/good", abnormal_dir=["test/scratch", "test/spot"],
                  normal_test_dir="test/good", mask_dir=["ground_truth/scratch", "ground_truth/spot"],
                  train_batch_size=4, eval_batch_size=8, num_workers=0, val_split_mode="same_as_test",
                  **kwargs)


def engine(tmp_path, **kwargs) -> Engine:
    kwargs.setdefault("max_steps", 3)
    return Engine(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=str(tmp_path), **kwargs)


def by_path(batches, field: str) -> dict[str, np.ndarray]:
    """``{real image path: value}`` of a field of anomalib's predicted batches."""
    out = {}
    for b in batches:
        values = getattr(b, field).detach().float().cpu().numpy()
        for path, v in zip(b.image_path, values):
            out[os.path.realpath(path)] = v.reshape(SIZE, SIZE) if field == "anomaly_map" else float(v)
    return out


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def trained(data64, tmp_path_factory):
    """mambaad_test trained 3 steps through anomalib on the 'stripes' Folder set; its checkpoint for
    mambaad; anomalib's predictions with and without its normalisation; ``mambaad eval --exact``."""
    out = tmp_path_factory.mktemp("anomalib")
    torch.manual_seed(0)
    model = MambaAD(model="mambaad_test", image_size=SIZE, pretrained=False, backend=FAST_BACKEND)
    data = folder_datamodule(data64, "stripes")
    eng = engine(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng.fit(model, datamodule=data)
        normalised = eng.predict(model, datamodule=data)
        metrics_normalised = eng.test(model, datamodule=data, verbose=False)[0]
        model.post_processor.enable_normalization = False
        raw = eng.predict(model, datamodule=data)
        metrics_raw = eng.test(model, datamodule=data, verbose=False)[0]
        model.post_processor.enable_normalization = True
    ckpt = model.save_mambaad_checkpoint(str(out / "mambaad.pt"), dataset="mvtec", root=data64,
                                         categories=["stripes"])
    assert main(["eval", "--checkpoint", ckpt, "--exact", "--workers", "0", "--output", str(out / "eval"),
                 "--no-store-threshold"]) == 0
    return {"model": model, "engine": eng, "data": data, "root": data64, "out": out, "ckpt": ckpt,
            "normalised": normalised, "raw": raw, "metrics_raw": metrics_raw,
            "metrics_normalised": metrics_normalised}


def mambaad_eval_maps(ckpt: str, root: str, category: str) -> tuple[dict, dict]:
    """Maps and scores by real image path, through what ``mambaad eval`` runs:
    ``build_model(load_checkpoint(...))`` on ``build_test_sets(...)``."""
    model = build_model(load_checkpoint(ckpt), FAST_BACKEND, "cpu")
    ds = build_test_sets("mvtec", root, [category], SIZE)[category]
    maps, scores = {}, {}
    with torch.no_grad():
        for batch in DataLoader(ds, batch_size=8, shuffle=False):  # as mambaad eval's default
            out = model(batch["image"])
            for path, amap, score in zip(batch["path"], out.anomaly_map[:, 0], out.pred_score):
                maps[os.path.realpath(path)], scores[os.path.realpath(path)] = amap.numpy(), float(score)
    return maps, scores


def test_anomalib_maps_equal_mambaad_eval(trained):
    """The raw maps anomalib predicts are our model's; with anomalib's default post-processing they are
    that post-processor's min-max normalisation of ours, nothing else."""
    ours, our_scores = mambaad_eval_maps(trained["ckpt"], trained["root"], "stripes")
    raw = by_path(trained["raw"], "anomaly_map")
    assert sorted(raw) == sorted(ours) and len(ours) == 3 + 2 * 2
    worst = max(rel_diff(raw[k], ours[k]) for k in ours)
    print(f"max relative difference of the maps: {worst:.2e}")
    assert worst <= MAX_REL_DIFF, worst
    scores = by_path(trained["raw"], "pred_score")
    assert max(abs(scores[k] - our_scores[k]) / abs(our_scores[k]) for k in ours) <= MAX_REL_DIFF
    post = trained["model"].post_processor
    normalised = by_path(trained["normalised"], "anomaly_map")
    # the normalisation (m - t) / (max - min) + 0.5 magnifies the maps' differences by 1 / (max - min)
    atol = MAX_REL_DIFF * max(np.abs(m).max() for m in ours.values()) / float(post.pixel_max - post.pixel_min)
    for k, m in ours.items():
        expected = post._normalize(torch.from_numpy(m), post.pixel_min, post.pixel_max, post.pixel_threshold)
        np.testing.assert_allclose(normalised[k], expected.numpy(), rtol=0, atol=atol)


def test_resize_difference(trained, tmp_path):
    """At another size than the model's (the generated 72 x 72 files at 64), anomalib's torchvision
    resize and mambaad's PIL resize give maps that differ visibly, though little (docs/anomalib.md)."""
    root = make_tiny_mvtec(str(tmp_path / "tiny72"), n_train=1, n_good=2, n_defect=1)
    model, eng = trained["model"], trained["engine"]
    model.post_processor.enable_normalization = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = eng.predict(model, datamodule=MVTecAD(root=root, category="disc", num_workers=0,
                                                        eval_batch_size=8))
    finally:
        model.post_processor.enable_normalization = True
    theirs = by_path(raw, "anomaly_map")
    ours, _ = mambaad_eval_maps(trained["ckpt"], root, "disc")
    diffs = [rel_diff(theirs[k], ours[k]) for k in ours]
    print(f"resize 72 -> 64: max relative map difference {max(diffs):.2e}, median {np.median(diffs):.2e} "
          f"({len(diffs)} images)")
    assert MAX_REL_DIFF < max(diffs) < 1e-2


def test_anomalib_metrics_agree_with_ours(trained):
    """anomalib's image AUROC, pixel AUROC and AUPRO (its Engine.test on the raw maps, and its metric
    classes alone) against mambaad.metrics (exact) on the same maps; ``mambaad eval --exact`` on its
    own maps of the same weights."""
    keys = sorted(by_path(trained["raw"], "anomaly_map"))
    raw, scores = by_path(trained["raw"], "anomaly_map"), by_path(trained["raw"], "pred_score")
    a = np.stack([raw[k] for k in keys])  # (N, H, W) anomalib's maps
    masks, labels = {}, {}
    for b in trained["raw"]:
        for path, m, y in zip(b.image_path, b.gt_mask, b.gt_label):
            masks[os.path.realpath(path)], labels[os.path.realpath(path)] = m.numpy().astype(bool), int(y)
    m = np.stack([masks[k] for k in keys])
    exact = metrics.compute_metrics(np.array([scores[k] for k in keys]), np.array([labels[k] for k in keys]),
                                    a, m)
    with open(trained["out"] / "eval" / "metrics.json") as f:
        cli = json.load(f)["stripes"]
    got = trained["metrics_raw"]
    pixel_auroc, aupro = AUROC(fields=["anomaly_map", "gt_mask"]), AUPRO(fields=["anomaly_map", "gt_mask"])
    same = SimpleNamespace(anomaly_map=torch.from_numpy(a), gt_mask=torch.from_numpy(m))
    pixel_auroc.update(same)
    aupro.update(same)
    alone = {"p_auroc": float(pixel_auroc.compute()), "aupro": float(aupro.compute())}
    for theirs, key in (("image_AUROC", "i_auroc"), ("pixel_AUROC", "p_auroc"), ("pixel_AUPRO", "aupro")):
        print(f"{key}: anomalib test {got[theirs]:.9f}, classes {alone.get(key, math.nan):.9f}, "
              f"mambaad.metrics {exact[key]:.9f}, mambaad eval {cli[key]:.9f}")
        assert abs(got[theirs] - exact[key]) <= METRIC_TOL, (theirs, got[theirs], exact[key])
        assert key not in alone or abs(alone[key] - exact[key]) <= METRIC_TOL, (key, alone[key], exact[key])
        assert abs(cli[key] - exact[key]) <= METRIC_TOL, (key, cli[key], exact[key])
    assert all(math.isfinite(v) for v in trained["metrics_normalised"].values())


def test_visualiser_and_outputs(trained):
    """anomalib's visualiser wrote images from our maps; predictions carry labels and masks."""
    images = [f for _, _, files in os.walk(trained["out"]) for f in files if f.endswith(".png")]
    assert images, "the visualiser wrote nothing"
    batch = trained["normalised"][0]
    assert batch.pred_label is not None and batch.pred_mask is not None
    assert batch.anomaly_map.shape[-2:] == (SIZE, SIZE)


def test_multi_category_training(data64, tmp_path):
    """One model over both categories (MVTecAD datamodules), tested per category."""
    members = [MVTecAD(root=data64, category=c, train_batch_size=4, eval_batch_size=8, num_workers=0)
               for c in CATEGORIES]
    data = MultiCategory(members, train_batch_size=4)
    data.setup("fit")
    assert len(data.train_data) == sum(len(m.train_data) for m in members) == 2 * 8
    assert {p.split(os.sep)[-4] for p in data.train_data.samples.image_path} == set(CATEGORIES)
    assert len(data.test_data) == 2 * (3 + 2 * 2) and data.category == "+".join(CATEGORIES)
    torch.manual_seed(0)
    model = MambaAD(model="mambaad_test", image_size=SIZE, pretrained=False, backend=FAST_BACKEND,
                    visualizer=False)
    eng = engine(tmp_path, max_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng.fit(model, datamodule=MultiCategory(
            [MVTecAD(root=data64, category=c, num_workers=0) for c in CATEGORIES], train_batch_size=4,
            eval_batch_size=8, num_workers=0))
        table = evaluate_per_category(eng, model, data)
    assert list(table) == [*CATEGORIES, "mean"]
    for key in ("image_AUROC", "pixel_AUPRO"):
        assert table["mean"][key] == pytest.approx(np.mean([table[c][key] for c in CATEGORIES]))


NO_PROJ = {"dims": (512, 256, 128, 64), "depths": (1, 4, 1, 1)}  # decoder outputs = resnet18's channels


@pytest.mark.parametrize("naming", ["official", "ader"])
def test_hub_checkpoint_argument(naming, offline_hub):
    """``checkpoint=`` takes the authors' release from the Hub (offline, cached) in either naming,
    strictly, and is not kept in the hyperparameters."""
    torch.manual_seed(1)
    src = MambaAD(model="mambaad_test", config=NO_PROJ, pretrained=False, visualizer=False).model
    authors, _ = _authors_state_dict(src, naming)
    put_in_cache(offline_hub, "o/r", "w.pth", {"net": authors}, COMMIT_A)
    torch.manual_seed(2)
    model = MambaAD(model="mambaad_test", config=NO_PROJ, image_size=SIZE, pretrained=True,  # ignored
                    checkpoint="hf://o/r/w.pth", visualizer=False)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in model.model.state_dict().items())
    # rebuilding from a Lightning checkpoint must fetch nothing: no source, no ImageNet weights
    assert "checkpoint" not in model.hparams and model.hparams["model"] == "mambaad_test"
    assert model.hparams["pretrained"] is False
    with pytest.raises(ValueError, match="does not fit|differ in shape"):
        MambaAD(model="mambaad_test", pretrained=False, checkpoint="hf://o/r/w.pth", visualizer=False)


def test_recipe_and_lightning_checkpoint(data64, tmp_path):
    """AdamW groups, lr x batch / 16, the one-step decay at 80 % and grad-norm clipping as mambaad
    train has them; a Lightning checkpoint reloads with the same weights."""
    from lightning.pytorch.callbacks import Callback

    lrs = []

    class RecordLR(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    torch.manual_seed(0)
    model = MambaAD(model="mambaad_test", image_size=SIZE, pretrained=False, backend=FAST_BACKEND,
                    visualizer=False)
    eng = engine(tmp_path, max_steps=5, callbacks=[RecordLR()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng.fit(model, datamodule=folder_datamodule(data64, "disc"))
    base = 0.005 * 4 / 16  # batch 4
    assert lrs == [[lr_at(s, 5, base, 0.8, 0.1)] * 2 for s in range(5)]
    opt = eng.trainer.optimizers[0]
    ours = param_groups(model.model, 1e-4)
    assert [len(g["params"]) for g in opt.param_groups] == [len(g["params"]) for g in ours]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert eng.trainer.gradient_clip_val == 5.0 and eng.trainer.gradient_clip_algorithm == "norm"
    path = str(tmp_path / "module.ckpt")
    eng.trainer.save_checkpoint(path)
    back = MambaAD.load_from_checkpoint(path)
    assert all(torch.equal(v, model.model.state_dict()[k]) for k, v in back.model.state_dict().items())


def test_export_torch_and_the_missing_portable_export(trained, tmp_path, monkeypatch):
    """Engine.export: 'torch' works; without mambaad_kernels.export_onnx, ONNX and OpenVINO raise
    ExportUnavailable naming what to use instead (not a trace from inside torch.onnx)."""
    import mambaad_kernels

    eng, model = trained["engine"], trained["model"]
    path = eng.export(model, export_type="torch", export_root=str(tmp_path))
    loaded = torch.load(path, weights_only=False)["model"].eval()
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(images).anomaly_map, model.eval()(images).anomaly_map)
    monkeypatch.delattr(mambaad_kernels, "export_onnx")
    for kind in ("onnx", "openvino"):
        with pytest.raises(ExportUnavailable, match="export_type='torch'"):
            eng.export(model, export_type=kind, export_root=str(tmp_path), input_size=(SIZE, SIZE))


def _test_images(root: str, category: str) -> torch.Tensor:
    """The category's test images as anomalib reads them: ``(N, 3, 64, 64)`` float32 in [0, 1]."""
    from anomalib.data.utils import read_image

    folder = os.path.join(root, category, "test")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files)
    return torch.stack([read_image(p, as_tensor=True) for p in paths])


def test_export_onnx(trained, tmp_path):
    """Engine.export(export_type='onnx'): a file in anomalib's layout, the outputs anomalib's
    inferencers read by name, equal to the module's own forward on the test images (onnxruntime)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    eng, model = trained["engine"], trained["model"]
    path = eng.export(model, export_type="onnx", export_root=str(tmp_path))
    assert path == tmp_path / "weights" / "onnx" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["pred_score", "pred_label", "anomaly_map", "pred_mask"]
    assert [i.name for i in session.get_inputs()] == ["input"]  # as anomalib's own exports name it
    images = _test_images(trained["root"], "stripes")
    got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images.numpy()})))
    with torch.no_grad():
        want = model.eval()(images)
    for name in ("pred_score", "anomaly_map"):
        ref = getattr(want, name).numpy()
        assert np.abs(got[name] - ref).max() / np.abs(ref).max() <= 1e-4, name
    assert got["anomaly_map"].shape == (len(images), 1, SIZE, SIZE)


def test_export_openvino(trained, tmp_path, monkeypatch):
    """Engine.export(export_type='openvino'): the .xml anomalib's OpenVINOInferencer runs, equal to the
    module's forward on the test images."""
    pytest.importorskip("openvino")
    monkeypatch.chdir(tmp_path)  # the inferencer makes an openvino_cache folder in the working directory
    pytest.importorskip("onnxscript")
    from anomalib.deploy import OpenVINOInferencer

    eng, model = trained["engine"], trained["model"]
    path = eng.export(model, export_type="openvino", export_root=str(tmp_path))
    assert path.suffix == ".xml" and path.with_suffix(".bin").is_file()
    images = _test_images(trained["root"], "stripes")
    inferencer = OpenVINOInferencer(path=path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    with torch.no_grad():
        want = model.eval()(images[:2])
    got = inferencer.predict(images[:2].permute(0, 2, 3, 1).numpy())
    ref = want.anomaly_map.numpy()
    assert np.abs(np.asarray(got.anomaly_map).reshape(ref.shape) - ref).max() / np.abs(ref).max() <= 1e-4
