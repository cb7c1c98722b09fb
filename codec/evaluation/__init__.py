"""Rate–distortion evaluation: `diveq-codec eval` and `bench` (needs the `eval` extra for plots and BD-rates)."""
