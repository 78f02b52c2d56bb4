"""Built-in vision plugin: image folders, face alignment, ResNet/MobileNet, the face modality.

Hook functions import their modules lazily so `import metaemb.plugins.vision` stays light.
"""

from __future__ import annotations

from typing import Any

from metaemb import hookimpl
from metaemb.core.plugin.hookspecs import Register

# Hook specifications this plugin adds (landmark sources): the plugin manager loads them.
metaemb_hookspecs = "metaemb.plugins.vision.hookspecs"


@hookimpl
def register_sample_folders(register: Register) -> None:
    from metaemb.plugins.vision.folder import ImageFolder

    register("image", ImageFolder, description="<identity>/…/<image> folders (jpg, png, ppm, …)")
    from metaemb.plugins.vision.protocols import AgeDBFolder, VGGFace2Folder

    register("vggface2", VGGFace2Folder, description="VGGFace2 split from train_list/test_list.txt")
    register("agedb", AgeDBFolder, description="flat AgeDB folder, <index>_<Name>_<age>_<g>.jpg")
    from metaemb.plugins.vision.recordio import RecordIOFolder

    register(
        "recordio",
        RecordIOFolder,
        description="InsightFace train.rec/train.idx (MS1M, Glint360K), read without MXNet",
    )
    from metaemb.plugins.vision.tarshards import ImageTarFolder

    register(
        "image-tar",
        ImageTarFolder,
        description="WebDataset-style tar shards: xyz.jpg + xyz.cls (random access, indexed)",
    )


@hookimpl
def register_features(register: Register) -> None:
    from metaemb.plugins.vision.features import ImageFeatures

    register("image", ImageFeatures, description="resize + (x/255−0.5)/0.5, training augmentation")


@hookimpl
def register_backbones(register: Register) -> None:
    from metaemb.plugins.vision.backbones.mobilenet import MobileNetV3Large, MobileNetV3Small
    from metaemb.plugins.vision.backbones.resnet import ResNet18, ResNet34, ResNet50

    register("resnet18", ResNet18, description="torchvision ResNet-18, 512 features")
    register("resnet34", ResNet34, description="torchvision ResNet-34, 512 features")
    register("resnet50", ResNet50, description="torchvision ResNet-50, 2048 features")
    register("mobilenet_v3_small", MobileNetV3Small, description="MobileNetV3-Small, 576 features")
    register("mobilenet_v3_large", MobileNetV3Large, description="MobileNetV3-Large, 960 features")
    from metaemb.plugins.vision.backbones.dlib_resnet import DlibResNet

    register(
        "dlib-resnet",
        DlibResNet,
        description="dlib's pretrained 128-d face ResNet, frozen (face extra); teacher/reference",
    )


@hookimpl
def register_demo_data(register: Register) -> None:
    from metaemb.plugins.vision.synthetic import generate_faces

    register("face", generate_faces, description="synthetic cartoon faces with nuisance variation")


@hookimpl
def register_modalities(register: Register) -> None:
    from metaemb.core.plugin.modality import Modality

    face = Modality(
        name="face",
        description="face recognition from <identity>/<image> folders",
        sample_folder="image",
        frontend="none",
        features="image",
        backbone="resnet18",
        demo_data="face",
        baseline_name="raw pixels",
        # Tuned on the demo data for a < 10 min CPU run (see the vision plugin notes): the stock
        # stem at 64 px is ~4× cheaper than the small-input stem and learns the demo task well.
        # Component options apply only to the component named here (a plugin's backbone never
        # gets them). Label smoothing suits both softmax objectives on this data.
        options={
            "demo": {"face": {"identities": 120, "images_per_identity": 8}},
            "features": {"image": {"image_size": 64}},
            "backbone": {"resnet18": {"small_input": False}},
            "objective": {
                "softmax": {"label_smoothing": 0.1},
                "gme-softmax": {"label_smoothing": 0.1},
            },
        },
        defaults={
            "train.epochs": 8,
            "train.batch_size": 64,
            "train.optimizer": "sgd",
            "train.lr": 0.1,
            "train.warmup_epochs": 1.0,
        },
        former_options={  # runs saved before MobileNetV3's BatchNorm momentum became an option
            "backbone": {
                "mobilenet_v3_small": {"bn_momentum": 0.01},
                "mobilenet_v3_large": {"bn_momentum": 0.01},
            }
        },
    )
    register("face", face, description=face.description)


@hookimpl
def register_frontends(register: Register) -> None:
    from metaemb.plugins.vision.frontend import AlignFrontend

    register(
        "align",
        AlignFrontend,
        description="5-point similarity alignment to the face template",
        python="metaemb.plugins.vision.align.align_faces",  # named in export sidecars
    )


@hookimpl
def register_commands(app: Any) -> None:
    from metaemb.plugins.vision.bin_pack import unpack_bin
    from metaemb.plugins.vision.landmark_extract import landmarks

    app.command()(landmarks)
    app.command("unpack-bin")(unpack_bin)


@hookimpl
def register_landmark_sources(register: Register) -> None:
    from metaemb.plugins.vision.dlib_detect import DlibLandmarks
    from metaemb.plugins.vision.landmarks import FileLandmarks

    register("file", FileLandmarks, description="landmark files shipped with the data (CSV/JSON)")
    register("dlib", DlibLandmarks, description="dlib HOG/CNN detector + 68/5-point landmarks")


@hookimpl
def register_export_adapters(register: Register) -> None:
    from metaemb.plugins.vision.export import ImageExport

    register("image", ImageExport, description="images [N, 3, S, S], resized and normalised")


@hookimpl
def register_trial_formats(register: Register) -> None:
    from metaemb.plugins.vision.lfw import LFWPairs

    register("lfw", LFWPairs, description="LFW pairs.txt: 'folds n' header, matched/mismatched")


@hookimpl
def register_protocols(register: Register) -> None:
    from metaemb.plugins.vision import protocols as p

    register("lfw", p.lfw, description="LFW View 2 pairs.txt, folds from its header")
    register("vggface2", p.vggface2, description="seeded identity-disjoint pairs, VGGFace2 test",
             folder="vggface2")  # fmt: skip
    register("agedb", p.agedb, description="AgeDB-30 style pairs (matched pairs ≥ 30 years apart), 10 folds",
             folder="agedb")  # fmt: skip
