"""`VisionHandler`: images from request bytes (or base64 text, or nested lists) to a batch."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from torchport.runtime.torchserve.ts.context import Context
from torchport.runtime.torchserve.ts.handler_utils.timer import timed
from torchport.runtime.torchserve.ts.torch_handler.base_handler import BaseHandler

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ImagenetTransform:
    """Resize the shorter side to 256 (bilinear), crop the centre 224 by 224, scale to [0, 1]
    and normalise with ImageNet's statistics: torchvision's `Resize(256)`, `CenterCrop(224)`,
    `ToTensor()`, `Normalize(...)` on a PIL image, computed the same way (PIL's resize,
    float32 arithmetic), without needing torchvision."""

    def __init__(self, resize: int = 256, crop: int = 224) -> None:
        self.resize = resize
        self.crop = crop

    def __call__(self, image: Any) -> torch.Tensor:
        from PIL import Image

        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        size = (self.resize, new_long) if width <= height else (new_long, self.resize)
        image = image.resize(size, Image.Resampling.BILINEAR)
        width, height = image.size
        top = round((height - self.crop) / 2.0)
        left = round((width - self.crop) / 2.0)
        image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = np.asarray(image, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.shape[2] != len(IMAGENET_MEAN):
            raise ValueError(
                f"the image has {pixels.shape[2]} channels ({image.mode}); RGB is expected"
            )
        chw = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        chw = (chw - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
        return torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))


class VisionHandler(BaseHandler):
    """Each request's `data` or `body`: image bytes, base64 text of them, or a nested list."""

    image_processing: Callable[[Any], torch.Tensor] = ImagenetTransform()

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        if not context.system_properties.get("limit_max_image_pixels"):
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = None

    @timed
    def preprocess(self, data: Any) -> torch.Tensor:
        from PIL import Image

        images = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                image = base64.b64decode(image)
            if isinstance(image, bytes | bytearray):
                images.append(self.image_processing(Image.open(io.BytesIO(image))))
            else:
                images.append(torch.FloatTensor(image))
        return torch.stack(images).to(self.device)
