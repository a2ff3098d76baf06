"""The run workflow every room uses: run dirs, checkpoints, configs, atomic writes, statistics, videos."""
