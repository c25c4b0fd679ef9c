"""Shared fixtures for the numerics tests.

pyproject runs pytest with --import-mode=importlib, so this directory is not on sys.path by
itself: put it there so the tests can import the independent reference ``spec_ref``.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
