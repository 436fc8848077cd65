"""Operations: how the running pipeline is doing (lake growth, sink lag, dead letters, stream gaps, degradation)."""
