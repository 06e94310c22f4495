"""W-Net (Xia & Kulis 2017): the classic fully unsupervised segmenter, as ``method=wnet`` and ``graph=wnet``."""

from datus.wnet.data import ImageBank
from datus.wnet.decompose import WNetDecomposer
from datus.wnet.merge import merge_small_regions
from datus.wnet.model import UNet, WNet
from datus.wnet.module import WNetModule
from datus.wnet.ncut import SoftNCut, window_offsets
from datus.wnet.stage import WNetFileError, WNetTraining, load_wnet, memberships_to_mask, segment_bank

__all__ = ["ImageBank", "SoftNCut", "UNet", "WNet", "WNetDecomposer", "WNetFileError", "WNetModule", "WNetTraining", "load_wnet",
           "memberships_to_mask", "merge_small_regions", "segment_bank", "window_offsets"]
