"""Metric keys: written by tasks, parsed by the store and the reporter."""
from arena.records import metric_key, parse_metric_key


def test_metric_keys_round_trip():
    key = metric_key("exact_match", len=1024, depth=0.25)
    assert key == "exact_match@len=1024,depth=0.25"
    assert parse_metric_key(key) == ("exact_match", {"len": 1024, "depth": 0.25})
    assert parse_metric_key("accuracy") == ("accuracy", {})
    assert parse_metric_key("loss@split=val") == ("loss", {"split": "val"})
    assert metric_key("accuracy") == "accuracy"
