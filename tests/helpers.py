"""Shared test helpers: the config file loaded as the CLI loads it."""

import importlib.util
from pathlib import Path

import ml_collections

ROOT = Path(__file__).resolve().parents[1]
SHARED_POLYVORE = ROOT.parent / "shared" / "data" / "polyvore"


def load_config(arg: str = "") -> ml_collections.ConfigDict:
  """configs/bilstm.py:get_config(arg), unlocked copies left to the caller."""
  spec = importlib.util.spec_from_file_location("bilstm_config", ROOT / "configs" / "bilstm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
