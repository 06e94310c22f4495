"""ResNet-50 backbone (MoCo v2): ``layer4`` is the patch map, its global average the CLS."""

from __future__ import annotations

from torch import Tensor
from torchvision.models import ResNet

from datus.backbones.base import Backbone, BackboneOutput


class ResNetBackbone(Backbone):
    """A frozen torchvision ResNet seen as a backbone with patch size 32 (its output stride)."""

    def __init__(
        self,
        model: ResNet,
        name: str,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.mean, self.std = tuple(mean), tuple(std)
        self.patch_size = 32
        self.embed_dim = int(model.fc.in_features)

    def extract(self, images: Tensor, blocks: tuple[int, ...] = ()) -> BackboneOutput:
        self.block_indices(blocks)  # a CNN has no blocks of tokens: any request is an error
        grid = self.check_input(images)
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(images))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))  # (B, 2048, h, w)
        tokens = x.flatten(2).transpose(1, 2)
        return BackboneOutput(tokens=tokens, cls=tokens.mean(dim=1), grid=grid)
