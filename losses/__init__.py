"""Preference losses for `po`: one file per loss, each a `PreferenceLoss` selected by `conf/loss/NAME.yaml`."""

from losses.base import ListBatch, LossOutput, PairBatch, PreferenceLoss

__all__ = ["ListBatch", "LossOutput", "PairBatch", "PreferenceLoss"]
