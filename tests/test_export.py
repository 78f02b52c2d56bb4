"""`metaemb export`: ONNX Runtime / TorchScript outputs equal PyTorch's for any batch size (and audio
length), GME heads export (a, b), the sidecar says how to feed the model, bad input is refused."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli

import metaemb
from metaemb.core.checkpoints import save_checkpoint
from metaemb.core.config import resolve
from metaemb.core.data.pipeline import build_model
from metaemb.core.deploy.export import ExportError, export, load_inference
from metaemb.core.deploy.export_checks import check_parity
from metaemb.core.errors import MetaembError

FACE = ["features.image_size=16", "model.dim=16"]
SPEAKER = [
    "backbone.channels=32",
    "backbone.pool_channels=48",
    "backbone.embedding_dim=24",
    "model.dim=12",
]


def make_checkpoint(path: Path, modality: str, sets: list[str], example: tuple) -> tuple:
    """A checkpoint as the engine writes it, with BatchNorm statistics moved off their defaults
    (a few train-mode passes) so the exported graph has to carry real normalisation."""
    cfg = resolve(modality, None, sets)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(*example)
    model.eval()
    state = {
        "config": cfg.to_dict(),
        "config_hash": cfg.hash(),
        "model": model.state_dict(),
        "input_spec": model.features.input_spec(),
        "epoch": 1,
    }
    save_checkpoint(path, state)
    return path, model, cfg


def faces(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Normalised images, as ImageFeatures.prepare(train=False) makes them."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def voices(lengths: list[int], seed: int = 0, pad_to: int | None = None) -> tuple:
    """Speech-like test signals (harmonics of a gliding f0 plus noise), zero-padded."""
    g = torch.Generator().manual_seed(seed)
    t_max = pad_to or max(lengths)
    waves = torch.zeros(len(lengths), t_max)
    for i, n in enumerate(lengths):
        t = torch.arange(n) / 16000.0
        f0 = 110.0 + 40.0 * i + 30.0 * torch.sin(2 * math.pi * 0.7 * t)
        phase = 2 * math.pi * torch.cumsum(f0, 0) / 16000.0
        x = sum(torch.sin(k * phase) / k for k in range(1, 8))
        waves[i, :n] = 0.1 * x + 0.01 * torch.randn(n, generator=g)
    return waves, torch.tensor(lengths)


def outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return list(out)
    return [out.a, out.b]  # a GME


@pytest.fixture(scope="module")
def face_ckpt(tmp_path_factory):
    return make_checkpoint(
        tmp_path_factory.mktemp("face") / "best.pt", "face", FACE, (faces(8, seed=9),)
    )


@pytest.fixture(scope="module")
def speaker_ckpt(tmp_path_factory):
    return make_checkpoint(
        tmp_path_factory.mktemp("speaker") / "best.pt",
        "speaker",
        SPEAKER,
        voices([16000, 12000, 9000], seed=9),
    )


@pytest.fixture(scope="module")
def speaker_gme_ckpt(tmp_path_factory):
    return make_checkpoint(
        tmp_path_factory.mktemp("gme") / "best.pt",
        "speaker",
        [*SPEAKER, 'model.head="gme"', 'train.objective="gme-bxe"'],  # a GME head needs one
        voices([16000, 12000, 9000], seed=9),
    )


def ort_session(path: Path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# -- images ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def face_onnx(face_ckpt):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    return export(face_ckpt[0], "onnx")


def test_face_onnx_matches_pytorch_for_batch_sizes_1_and_3(face_ckpt, face_onnx):
    _, model, _ = face_ckpt
    assert face_onnx.path == face_ckpt[0].with_name("best.onnx")
    session = ort_session(face_onnx.path)
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["embeddings"]
    for n in (1, 3):
        x = faces(n, seed=n)
        [got] = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref = model(x)
        assert got.shape == (n, 16)
        torch.testing.assert_close(torch.from_numpy(got), ref, atol=1e-4, rtol=1e-4)


def test_onnx_graph_declares_a_dynamic_batch_dimension(face_onnx):
    import onnx

    graph = onnx.load(str(face_onnx.path)).graph
    [inp], [out] = graph.input, graph.output
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic, not a fixed number
    assert [d.dim_value for d in dims[1:]] == [3, 16, 16]
    assert out.type.tensor_type.shape.dim[0].dim_param
    names = {i.name for i in graph.initializer}
    assert not any("classifier" in n or "objective" in n for n in names)


def test_sidecar_describes_input_preprocessing_and_provenance(face_ckpt, face_onnx):
    _, _, cfg = face_ckpt
    info = json.loads(face_onnx.sidecar.read_text())
    assert face_onnx.sidecar.name == "best.onnx.json"
    assert info == face_onnx.info
    assert info["format"] == "onnx" and info["opset"] == 17 and info["file"] == "best.onnx"
    assert info["metaemb_version"] == metaemb.__version__
    assert info["config_hash"] == cfg.hash()
    assert info["embedding"] == {"kind": "point", "dim": 16}
    assert info["inputs"] == [{"name": "images", "shape": ["N", 3, 16, 16], "dtype": "float32"}]
    assert info["outputs"] == [{"name": "embeddings", "shape": ["N", 16], "dtype": "float32"}]
    spec = info["input_spec"]
    assert spec["image_size"] == 16 and spec["mean"] == [0.5] * 3 and spec["std"] == [0.5] * 3
    assert info["components"] == {
        "sample_folder": "image",  # how files were read before the frontend (P21 F6)
        "frontend": "none",
        "features": "image",
        "backbone": "resnet18",
        "head": "linear",
        "scorer": "cosine",
    }
    assert info["preprocessing"][0].startswith("no frontend")
    assert "(x − mean) / std" in info["preprocessing"][3]
    assert "torchvision.transforms.v2.functional.resize(antialias=True)" in info["preprocessing"][1]
    assert "16-bit data keeps its high byte (value >> 8)" in info["preprocessing"][1]
    assert info["verified"]["max_abs_diff"] < 1e-4
    assert info["verified"]["wrapper_vs_model_max_rel_diff"] == 0  # ImageInference is the model
    # the checkpoint named wherever export ran, and the weights' digest, as galleries record it
    from metaemb.core.checkpoints import load_checkpoint
    from metaemb.core.deploy.stamp import model_digest

    assert Path(info["checkpoint"]).is_absolute()
    assert info["model_digest"] == model_digest(load_checkpoint(face_ckpt[0])["model"])
    # the .onnx copied alone to a model store still says what it is (E1 F5)
    meta = ort_session(face_onnx.path).get_modelmeta().custom_metadata_map
    assert json.loads(meta["metaemb"]) == json.loads(json.dumps(info, default=str))
    assert meta["config_hash"] == cfg.hash() and meta["embedding_dim"] == "16"
    assert meta["embedding_kind"] == "point" and meta["modality"] == "face"


def test_face_torchscript_matches_pytorch(face_ckpt, tmp_path):
    _, model, _ = face_ckpt
    out = tmp_path / "face.ts"
    result = export(face_ckpt[0].parent, "torchscript", out)  # a run directory works too
    assert result.sidecar == tmp_path / "face.ts.json"
    assert "opset" not in result.info
    loaded = torch.jit.load(str(out))
    for n in (1, 3):
        x = faces(n, seed=10 + n)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)


# -- audio ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"window": "hamming", "preemphasis": 0.0, "cmn": False, "n_mels": 40},
        {"remove_dc_offset": False, "low_freq": 100.0, "high_freq": -400.0},
        {"cmn": "level"},
    ],
)
def test_traceable_fbank_matches_kaldi_fbank(opts):
    from metaemb.plugins.audio.export import TraceableFbank
    from metaemb.plugins.audio.fbank import KaldiFbank

    fbank = KaldiFbank(**opts).eval()
    waves, lengths = voices([16000, 7000, 401, 399])  # 399 < one frame: no frames at all
    ref, ref_len = fbank(waves, lengths)
    got, got_len = TraceableFbank(fbank)(waves, lengths)
    assert torch.equal(got_len, ref_len) and got_len.tolist() == [98, 42, 1, 0]
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=0)
    assert got[1, :, 42:].abs().max() == 0 and got[3].abs().max() == 0  # padding frames stay zero


def test_speaker_onnx_matches_pytorch_for_two_lengths_and_batch_sizes(speaker_ckpt):
    pytest.importorskip("onnx")
    path, model, _ = speaker_ckpt
    result = export(path, "onnx")
    assert result.info["inputs"][0] == {
        "name": "waveforms",
        "shape": ["N", "T"],
        "dtype": "float32",
    }
    assert result.info["inputs"][1]["dtype"] == "int64"
    assert result.info["verified"]["fbank_max_abs_diff"] < 1e-3
    assert result.info["components"]["frontend"] == "energy"
    assert result.info["frontend_options"]["threshold"] == 5.5  # defaults included
    assert result.info["sample_folder_options"]["sample_rate"] == 16000  # read as training read
    assert "Kaldi energy VAD" in result.info["preprocessing"][0]
    said = " ".join(result.info["preprocessing"])  # the edges of the input contract (E1 F12)
    assert (
        "several channels: their mean" in said and "Kaiser window" in said and "kaiser_best" in said
    )
    assert "shorter than one analysis frame (400 samples) are refused" in said
    session = ort_session(result.path)
    for lengths in ([12000], [20000, 15000, 8000]):
        waves, lens = voices(lengths, seed=len(lengths))
        [got] = session.run(None, {"waveforms": waves.numpy(), "lengths": lens.numpy()})
        with torch.no_grad():
            ref = model(waves, lens)  # the model's own KaldiFbank
        assert got.shape == (len(lengths), 12)
        torch.testing.assert_close(torch.from_numpy(got), ref, atol=2e-4, rtol=1e-3)
    # Extra zero padding past the longest utterance changes nothing.
    waves, lens = voices([10000, 9000], seed=5, pad_to=11000)
    [got] = session.run(None, {"waveforms": waves.numpy(), "lengths": lens.numpy()})
    with torch.no_grad():
        ref = torch.cat(
            [model(waves[i : i + 1, :n], lens[i : i + 1]) for i, n in enumerate([10000, 9000])]
        )
    torch.testing.assert_close(torch.from_numpy(got), ref, atol=2e-4, rtol=1e-3)


def test_gme_head_exports_a_and_b_in_both_formats(speaker_gme_ckpt, tmp_path):
    pytest.importorskip("onnx")
    path, model, _ = speaker_gme_ckpt
    waves, lens = voices([14000, 9000, 6000], seed=3)
    with torch.no_grad():
        ref = model(waves, lens)
    assert (ref.b > 0).all()
    onnx_result = export(path, "onnx", tmp_path / "gme.onnx")
    assert onnx_result.info["embedding"] == {"kind": "gme", "dim": 12}
    assert [o["name"] for o in onnx_result.info["outputs"]] == ["a", "b"]
    session = ort_session(onnx_result.path)
    assert [o.name for o in session.get_outputs()] == ["a", "b"]
    a, b = session.run(None, {"waveforms": waves.numpy(), "lengths": lens.numpy()})
    torch.testing.assert_close(torch.from_numpy(a), ref.a, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(torch.from_numpy(b), ref.b, atol=2e-4, rtol=1e-3)
    export(path, "torchscript", tmp_path / "gme.ts")
    ta, tb = torch.jit.load(str(tmp_path / "gme.ts"))(waves, lens)
    torch.testing.assert_close(ta, ref.a, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(tb, ref.b, atol=2e-4, rtol=1e-3)


def test_speaker_torchscript_handles_lengths_it_was_not_traced_with(speaker_ckpt, tmp_path):
    path, model, _ = speaker_ckpt
    export(path, "torchscript", tmp_path / "spk.ts")
    loaded = torch.jit.load(str(tmp_path / "spk.ts"))
    for lengths in ([5000], [23456, 17000]):
        waves, lens = voices(lengths, seed=7)
        with torch.no_grad():
            torch.testing.assert_close(
                loaded(waves, lens), model(waves, lens), atol=2e-4, rtol=1e-3
            )


# -- errors ---------------------------------------------------------------------------------------
def test_an_output_name_promising_another_format_is_refused(speaker_ckpt, tmp_path):
    """`--out settings.toml` replaced the user's settings with a model: only a model's suffix is taken,
    and a `<out>.json` that is not an export sidecar is never replaced."""
    for fmt, name in (("onnx", "face.npy"), ("onnx", "face.pt"), ("torchscript", "x.onnx"),
                      ("torchscript", "settings.toml"), ("onnx", "model")):  # fmt: skip
        with pytest.raises(ExportError, match=r"export is named \.\w+.*, not '"):
            export(speaker_ckpt[0], fmt, tmp_path / name)
    assert not list(tmp_path.iterdir())
    (tmp_path / "m.onnx.json").write_text('{"mine": 1}')
    with pytest.raises(ExportError, match=r"m\.onnx\.json' exists and is not the sidecar"):
        export(speaker_ckpt[0], "onnx", tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx.json").read_text() == '{"mine": 1}'
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_format_and_bad_opset_are_refused(speaker_ckpt):
    with pytest.raises(ExportError, match=r"unknown export format 'onxx'; did you mean 'onnx'"):
        export(speaker_ckpt[0], "onxx")
    with pytest.raises(ExportError, match="--opset must be between 13 and 20"):
        export(speaker_ckpt[0], "onnx", opset=9)


def test_missing_or_foreign_checkpoints_are_refused(tmp_path):
    with pytest.raises(MetaembError, match=r"nope.pt. does not exist; give a run directory"):
        export(tmp_path / "nope.pt", "onnx")
    with pytest.raises(MetaembError, match=r"no best\.pt or last\.pt"):
        export(tmp_path, "torchscript")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(MetaembError, match="not a metaemb checkpoint"):
        export(tmp_path / "other.pt", "torchscript")


def test_parity_check_rejects_a_graph_that_differs(speaker_ckpt):
    inf = load_inference(speaker_ckpt[0])

    def shifted(inputs):
        with torch.no_grad():
            return [outputs(inf.module(*inputs))[0] + 1e-2]

    def frozen_batch(inputs):
        with torch.no_grad():
            return [outputs(inf.module(*inputs))[0][:1]]

    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_parity(shifted, inf.module, inf.kind, inf.spec)
    with pytest.raises(ExportError, match="shape was frozen"):
        check_parity(frozen_batch, inf.module, inf.kind, inf.spec)


def test_a_wrapper_that_drops_lengths_is_refused(speaker_ckpt):
    """The export is checked against the adapter's wrapper; the wrapper itself is checked
    against the model as training and `embed` call it, so one that drops `lengths` (padding
    then changes the pooled statistics) cannot pass as "matches PyTorch"."""
    from metaemb.core.deploy.export_checks import check_wrapper

    inf = load_inference(speaker_ckpt[0])
    assert check_wrapper(inf.model, inf.module, inf.kind, inf.spec) < 1e-3  # the fbank graph

    class NoLengths(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, waveforms, lengths):
            return self.model(waveforms, None)

    dropped = NoLengths(inf.model).eval()
    with pytest.raises(ExportError, match=r"wrap\(model\) differs from the run's model"):
        check_wrapper(inf.model, dropped, inf.kind, inf.spec)

    # an adapter whose examples all fill the batch cannot show it: a batch with lengths that
    # differ is made from them (a TorchScript export passed as verified, P19 F2)
    from metaemb.plugins.audio.export import FbankExport

    class FullLengths(FbankExport):
        def example(self, spec, batch, variant):
            waves, lengths = super().example(spec, batch, variant)
            return waves, torch.full_like(lengths, waves.shape[-1])

    assert check_wrapper(inf.model, inf.module, FullLengths(), inf.spec) < 1e-3
    with pytest.raises(ExportError, match=r"wrap\(model\) differs from the run's model"):
        check_wrapper(inf.model, dropped, FullLengths(), inf.spec)


def test_an_adapter_whose_examples_ignore_variant_is_warned_about(speaker_ckpt):
    """Examples of one length check the export only on the length it was traced with."""
    import warnings

    from metaemb.core.deploy.export_checks import warn_fixed_examples
    from metaemb.plugins.audio.export import FbankExport

    class FixedLength(FbankExport):
        def example(self, spec, batch, variant):
            return super().example(spec, batch, 0)

    inf = load_inference(speaker_ckpt[0])
    with pytest.warns(UserWarning, match="gives input 'waveforms' the same size on its dynamic"):
        warn_fixed_examples(FixedLength(), inf.spec)

    class Stereo(FbankExport):  # declares [N, 2, T]: the sidecar would misdescribe the graph
        def shapes(self, spec):
            return [["N", 2, "T"], ["N"]]

    from metaemb.core.deploy.export_checks import check_declared_shapes

    with pytest.raises(ExportError, match=r"shapes\(\) gives input 'waveforms' as \['N', 2, "
                       r"'T'\] but example\(\) makes it \[2, \d+\]"):  # fmt: skip
        check_declared_shapes(Stereo(), inf.spec)
    check_declared_shapes(FbankExport(), inf.spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_fixed_examples(FbankExport(), inf.spec)


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_export_end_to_end(speaker_ckpt, tmp_path, capsys, monkeypatch):
    path, model, _ = speaker_ckpt
    out = tmp_path / "deploy" / "speaker.ts"
    code, stdout, err = run_cli(
        ["export", str(path), "--format", "torchscript", "--out", str(out)], capsys, monkeypatch
    )
    assert code == 0, err
    assert f"wrote {out}" in stdout and "waveforms, lengths → embeddings" in stdout
    assert json.loads(out.with_name("speaker.ts.json").read_text())["format"] == "torchscript"
    extra = {"metaemb.json": ""}
    torch.jit.load(str(out), _extra_files=extra)  # the sidecar inside the file too (E1 F5)
    assert json.loads(extra["metaemb.json"])["modality"] == "speaker"
    waves, lens = voices([9000, 7000], seed=11)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.jit.load(str(out))(waves, lens), model(waves, lens), atol=2e-4, rtol=1e-3
        )

    code, _, err = run_cli(["export", str(path), "--format", "tflite"], capsys, monkeypatch)
    assert code == 2 and "unknown export format 'tflite'" in err
    code, _, err = run_cli(["export", str(tmp_path / "missing.pt")], capsys, monkeypatch)
    assert code == 2 and "missing.pt" in err


def test_an_adapter_input_the_onnx_graph_dropped_is_named_not_a_traceback():
    """A model that never reads `lengths` (fixed-size features) loses that input in ONNX; the
    parity check fed it anyway and onnxruntime raised 'Invalid input name: lengths'."""
    import io

    from metaemb.core.deploy.export import ExportError, onnx_runner

    class IgnoresLengths(torch.nn.Module):
        def forward(self, x, lengths):
            return x * 2

    buf = io.BytesIO()
    torch.onnx.export(IgnoresLengths(), (torch.randn(2, 3), torch.tensor([3, 3])), buf,
                      dynamo=False, input_names=["signals", "lengths"])  # fmt: skip
    with pytest.raises(ExportError, match=r"adapter 'x' \(plugin 'p'\) declares the input\(s\) "
                       r"lengths, but the exported graph does not use them"):  # fmt: skip
        onnx_runner(buf.getvalue(), ["signals", "lengths"], "export adapter 'x' (plugin 'p')")


def test_an_adapter_method_that_raises_is_named_with_its_plugin(face_ckpt, tmp_path, monkeypatch):
    """A plugin adapter's KeyError in shapes() (reading a spec key that is not there) reached
    the user as a traceback; it is one ExportError naming the adapter and its plugin."""
    from metaemb.core.deploy.export import ExportError, export
    from metaemb.plugins.vision.export import ImageExport

    def shapes(self, spec):
        return [["N", spec["n_leads"]]]

    monkeypatch.setattr(ImageExport, "shapes", shapes)
    with pytest.raises(ExportError, match=r"export adapter 'image' \(plugin 'vision'\) failed: "
                       r"KeyError: 'n_leads'"):  # fmt: skip
        export(face_ckpt[0], "torchscript", tmp_path / "m.pt")
    assert not list(tmp_path.iterdir())


def test_an_operator_the_exporter_lacks_names_the_model_not_the_adapter(face_ckpt, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    """A backbone using an op ONNX has no symbolic for was blamed on the export adapter."""
    pytest.importorskip("onnx")
    from metaemb.core.deploy.export import ExportError, export
    from metaemb.core.deploy.loading import load_run

    backbone = type(load_run(face_ckpt[0], "cpu").model.backbone)
    forward = backbone.forward

    def with_i0(self, *args, **kwargs):
        y = forward(self, *args, **kwargs)
        return y + torch.special.i0(y) * 0  # aten::i0 has no ONNX export

    monkeypatch.setattr(backbone, "forward", with_i0)
    with pytest.raises(ExportError, match=r"the model \(features 'image', backbone 'resnet18', "
                       r"head 'linear'\) could not be exported: .*i0.*--format torchscript "
                       r"exports the same model"):  # fmt: skip
        export(face_ckpt[0], "onnx", tmp_path / "m.onnx")


def test_replacing_the_export_of_another_checkpoint_is_said(face_ckpt, speaker_ckpt, tmp_path):
    """An export of another model at --out was replaced without a word (H17 F17); the same
    checkpoint exported again replaces its own quietly."""
    import warnings

    out = tmp_path / "model.pt"
    export(face_ckpt[0], "torchscript", out)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        export(face_ckpt[0], "torchscript", out)
    with pytest.warns(UserWarning, match=r"held the export of another checkpoint \('.*best.pt'\)"):
        export(speaker_ckpt[0], "torchscript", out)
    # a sidecar written before the absolute path named the checkpoint as typed (R6 F4)
    sidecar = out.with_name(out.name + ".json")
    info = json.loads(sidecar.read_text())
    info["checkpoint"] = os.path.relpath(speaker_ckpt[0])
    sidecar.write_text(json.dumps(info))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        export(speaker_ckpt[0], "torchscript", out)


def test_an_adapter_tracing_other_shapes_than_training_is_warned_about(tmp_path):
    """Features borrowing the square image adapter for 128×64 crops exported a 64×64 graph
    that every parity check passed, and deployed embeddings were off (P16 F14): training
    records the shape of its fixed-size inputs, and export compares its examples with it."""
    import warnings

    from metaemb.core.checkpoints import load_checkpoint, save_checkpoint

    path, _, _ = make_checkpoint(tmp_path / "best.pt", "face", FACE, (faces(4, seed=2),))
    state = load_checkpoint(path)
    state["input_shape"] = [3, 32, 16]  # what a tall-crop feature would have fed the network
    save_checkpoint(path, state)
    with pytest.warns(UserWarning, match=r"export adapter 'image' traces input 'images' as "
                      r"\[N, 3, 16, 16\], but the model was trained on \[N, 3, 32, 16\]"):  # fmt: skip
        export(path, "torchscript", tmp_path / "tall.pt")
    state["input_shape"] = [3, 16, 16]
    save_checkpoint(path, state)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        export(path, "torchscript", tmp_path / "square.pt")


def test_a_trained_run_records_its_input_shape_and_exports_without_a_word(tiny_face_run, tmp_path):
    """The shape export compares with is what training fed the network (fixed-size inputs)."""
    import warnings

    from metaemb.core.checkpoints import load_checkpoint

    _, run = tiny_face_run
    assert load_checkpoint(run / "best.pt")["input_shape"] == [3, 32, 32]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        export(run, "torchscript", tmp_path / "m.pt")


def test_the_fitted_scorer_is_exported_and_the_docs_numpy_scoring_reproduces_it(
    speaker_ckpt, tmp_path
):
    """A speaker run's scorer (cosine after the training mean, WCCN and spread, adapted to the
    scored set) had nothing in the artefact, so a service scored with plain cosine (E1 F2): its
    state goes beside the model, and docs/export.md's numpy function scores as metaemb does."""

    import numpy as np

    from metaemb.core.checkpoints import load_checkpoint
    from metaemb.core.plugin.components import build, validate_options

    path, _, cfg = speaker_ckpt
    opts = cfg.options("scorer")
    assert cfg.eval.scorer == "cosine" and all(
        opts[k] for k in ("subtract_mean", "wccn", "adapt_mean", "adapt_scale")
    ), opts  # the speaker default: every fitted part is exercised
    state = load_checkpoint(path)
    scorer = build("scorers", "cosine", validate_options("scorers", "cosine", opts, "scorer"))
    g = torch.Generator().manual_seed(5)
    dim = int(cfg.model.dim)
    train = torch.randn(200, dim, generator=g) + 3 * torch.randn(20, dim, generator=g).repeat(10, 1)
    scorer.fit(train, torch.arange(20).repeat(10))
    fitted = tmp_path / "best.pt"
    save_checkpoint(fitted, {**state, "scorer": scorer.state_dict()})
    done = export(fitted, "torchscript", tmp_path / "m.ts")
    entry = done.info["scorer"]
    assert entry["name"] == "cosine" and entry["options"]["adapt_relevance"] == 20.0  # defaults
    assert {k: entry["options"][k] for k in opts} == opts  # too (R6 F5)
    assert entry["state"] == "m.ts.scorer.npz"
    arrays = dict(np.load(tmp_path / entry["state"]))
    assert sorted(arrays) == ["mean", "model_digest", "variance", "wccn"]
    # tied to its model, as docs/export.md says to check (H21 F12)
    assert str(arrays["model_digest"]) == done.info["model_digest"]

    from helpers import doc_function

    cosine_scores = doc_function("docs/export.md", "cosine_scores")
    shift = 2.0 * torch.randn(dim, generator=g)  # another domain
    enroll, test = (torch.randn(n, dim, generator=g).double() + shift for n in (5, 7))
    scored = torch.cat([enroll, test])
    plain = cosine_scores(enroll.numpy(), test.numpy(), arrays, entry["options"])
    torch.testing.assert_close(torch.from_numpy(plain), scorer.score_matrix(enroll, test))
    scorer.adapt(scored)
    adapted = cosine_scores(enroll.numpy(), test.numpy(), arrays, entry["options"],
                            adapt_on=scored.numpy())  # fmt: skip
    torch.testing.assert_close(torch.from_numpy(adapted), scorer.score_matrix(enroll, test))
    assert np.abs(adapted - plain).max() > 1e-3  # the adaptation is part of what is checked

    # PLDA's arrays scored in numpy as docs/export.md writes them (P22 F5)
    plda = build("scorers", "plda", validate_options("scorers", "plda", {"lda_dim": 8}, "scorer"))
    plda.fit(train, torch.arange(20).repeat(10))
    parts = {k: v.numpy() for k, v in plda.state_dict().items()}
    plda_scores = doc_function("docs/export.md", "plda_scores")
    plda_space = doc_function("docs/export.md", "plda_space")
    opts = {"lda_dim": 8, "length_norm": True}
    torch.testing.assert_close(
        torch.from_numpy(plda_scores(enroll.numpy(), test.numpy(), parts, opts)),
        plda.score_matrix(enroll, test),
    )
    pooled = plda_space(enroll.numpy(), parts, opts).mean(0, keepdims=True)  # one model of 5
    torch.testing.assert_close(
        torch.from_numpy(plda_scores(pooled, test.numpy(), parts, opts, n=5)),
        plda.block(*plda.pool(plda.prepare(enroll), [list(range(5))])[:1], 5, plda.prepare(test)),
    )

    # a re-export that fails at the model leaves the earlier set whole, state file included
    from metaemb.core.deploy import export as export_module
    from metaemb.core.errors import OutputError

    real_write = export_module.atomic_write_bytes

    def disk_full(target, data):
        if Path(target).name == "m.ts":
            raise OutputError(f"no space left writing {target}")
        real_write(target, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export_module, "atomic_write_bytes", disk_full)
        with pytest.raises(OutputError):
            export(path, "torchscript", tmp_path / "m.ts")
    assert (tmp_path / "m.ts.scorer.npz").is_file()  # R6 F3: it was removed at once
    assert json.loads((tmp_path / "m.ts.json").read_text())["scorer"]["state"]
    # exported again from a checkpoint whose scorer has no state: the old file is not left
    export(path, "torchscript", tmp_path / "m.ts")
    assert not (tmp_path / "m.ts.scorer.npz").exists()
    sidecar = json.loads((tmp_path / "m.ts.json").read_text())
    assert sidecar["scorer"]["state"] is None


def test_an_aligned_face_export_says_how_to_align(tmp_path):
    """The sidecar named the align frontend and its options but not the template points, the
    landmark order or the warp; a service had to know InsightFace's template (E1 F4)."""
    from metaemb.plugins.vision.align import template

    path, _, _ = make_checkpoint(tmp_path / "best.pt", "face",
                                 [*FACE, 'model.frontend="align"', "frontend.crop_size=64"],
                                 (faces(8, seed=9),))  # fmt: skip
    details = export(path, "torchscript", tmp_path / "m.ts").info["frontend_details"]
    assert details["crop_size"] == 64
    got = np.array(details["template_points"]["mtcnn5"])
    assert np.allclose(got, template(64, "mtcnn5", 0), atol=1e-4) and got.shape == (5, 2)
    assert "image-left eye" in details["landmark_order"]["mtcnn5"]
    assert "bilinear" in details["warp"] and "Umeyama" in details["fit"]
    none, _, _ = make_checkpoint(tmp_path / "none" / "best.pt", "face", FACE, (faces(8),))
    assert "frontend_details" not in export(none, "torchscript", tmp_path / "m2.ts").info


def test_a_graph_that_froze_a_size_while_tracing_is_named_so():
    """A backbone taking `int(x.shape[-1])` traces it as a constant; the export then failed on
    the adapter's other lengths with torch's generic first line, or blamed the adapter (P19
    F7). The runner says a size was frozen, and how to keep it a tensor."""
    import io
    import warnings

    from metaemb.core.deploy.export import torchscript_runner

    class Frozen(torch.nn.Module):
        def forward(self, x):
            steps = int(x.shape[-1])  # the mistake: a Python number from a shape
            return (x * torch.ones(steps)).sum(-1)

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(Frozen(), torch.randn(2, 7)), buf)
    run = torchscript_runner(buf.getvalue())
    assert run((torch.randn(2, 7),))[0].shape == (2,)
    with pytest.raises(ExportError, match=r"other sizes than it was traced with \(\[2, 9\]\).*"
                       r"a size was frozen while tracing.*int\(x.shape\[-1\]\)"):  # fmt: skip
        run((torch.randn(2, 9),))

    # a graph failing at the very sizes it was traced with froze nothing: said as its own
    # failure, not sent hunting for int(x.shape[-1]) (R9 F10)
    class Fails(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.inv(x[:, :2]).sum(-1)  # a singular batch fails, any size

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(Fails(), torch.randn(2, 3)), buf)
    run = torchscript_runner(buf.getvalue(), traced=((2, 3),))
    with pytest.raises(ExportError, match=r"failed on the inputs it was traced with") as caught:
        run((torch.zeros(2, 3),))
    assert "frozen" not in str(caught.value)


def test_an_export_with_a_longer_evaluation_cap_says_it_in_its_sidecar(speaker_ckpt, tmp_path):
    """`export --features-set max_eval_seconds=600` recorded the set while its input_spec and
    preprocessing still said 100 s, which is what a deployer crops to (R12 F3)."""
    from helpers import run_cli

    target = tmp_path / "s.pt"
    args = ["export", speaker_ckpt[0], "--format", "torchscript", "--out", target,
            "--features-set", "max_eval_seconds=600"]  # fmt: skip
    code, _, err = run_cli(args)
    assert code == 0, err
    info = json.loads(target.with_name("s.pt.json").read_text())
    assert info["features_set"] == {"max_eval_seconds": 600.0}
    assert info["input_spec"]["max_eval_seconds"] == 600.0
    assert any("longer than 600.0 s centre-cropped" in step for step in info["preprocessing"])


def test_an_operator_of_a_later_opset_is_told_the_opset_not_another_format():
    """torch's 'Support for this operator was added in version 16' was followed by metaemb's
    'no form at any opset: use --format torchscript' (R12 F11): the opset is named."""
    from metaemb.core.deploy.export import ExportError, _failures_named

    blame = {"model": "backbone 'x'", "files": (__file__,)}
    said = r"Give --opset 16 \(metaemb exports opsets 13–20\)\.$"
    with pytest.raises(ExportError, match=said), _failures_named(blame):
        raise RuntimeError(
            "Exporting the operator 'aten::grid_sampler' to ONNX opset version 13 is not "
            "supported. Support for this operator was added in version 16, try exporting "
            "with this version."
        )
