"""Benchmarks (speed and memory targets live here, never in timed unit tests).

``python -m datus.bench discovery [--images N] [hydra overrides of conf/discover.yaml]``
"""
