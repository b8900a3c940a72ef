"""Lets ``pytest bench --benchmark-only`` import spikefuse from a plain checkout."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
