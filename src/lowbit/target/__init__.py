"""The machine: CPU traits that decide weight grids, measured layer costs and the latency choice,
speed prediction, the process's peak memory."""
