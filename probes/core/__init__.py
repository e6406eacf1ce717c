"""What every pipeline stage uses: the one error type, atomic writes, statistics, provenance."""
