"""The Maryland Polyvore dataset for TFDS (no TensorFlow needed) and a synthetic twin."""

from tfds_polyvore.layout import MAX_ITEMS
from tfds_polyvore.layout import item_id
from tfds_polyvore.polyvore import Polyvore
from tfds_polyvore.polyvore import builder_config
