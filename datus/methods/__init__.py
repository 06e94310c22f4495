"""Methods (``conf/method``): what turns a split's images into pseudo masks through the labeler.

The interface is :class:`Method` (:mod:`datus.methods.base`); each method is one file here.
"""

from datus.methods.base import STAGES, Job, Method
from datus.methods.clip_sam import ClipSam
from datus.methods.datus import Datus
from datus.methods.kmeans_patches import KMeansPatches
from datus.methods.primaps import PriMaPsMethod
from datus.methods.stego import StegoMethod
from datus.methods.wnet import WNetMethod

__all__ = ["STAGES", "ClipSam", "Datus", "Job", "KMeansPatches", "Method", "PriMaPsMethod", "StegoMethod", "WNetMethod"]
