"""Lifelong learning: regularisers, the SB3 bridge, schedules, the curriculum loop, its metrics and report."""
