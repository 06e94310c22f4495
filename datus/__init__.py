"""datus: unsupervised semantic segmentation with self-supervised vision transformers (DatUS²)."""

__version__ = "0.1.0"
