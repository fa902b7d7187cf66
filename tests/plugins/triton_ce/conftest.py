"""Triton runs on CPU through its interpreter: set TRITON_INTERPRET before any kernel is defined."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"
