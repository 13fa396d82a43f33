"""Discrete-event simulator: the real Scheduler and SpeculationPolicy on a virtual clock, CostModel step times."""
