"""TorchServe's built-in `image_classifier`: an image in, its top 5 classes out, named by
`index_to_name.json` when the package has one."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from torchport.runtime.torchserve.ts.handler_utils.timer import timed
from torchport.runtime.torchserve.ts.torch_handler.vision_handler import VisionHandler
from torchport.runtime.torchserve.ts.utils.util import map_class_to_label


class ImageClassifier(VisionHandler):
    topk = 5

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    @timed
    def postprocess(self, data: Any) -> list[dict[str, float]]:
        ps = F.softmax(data, dim=1)
        probs, classes = torch.topk(ps, self.topk, dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())
