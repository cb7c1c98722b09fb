"""DiVeQ against the usual VQ gradient estimators at equal budget (README.md here).

Run ``python -m experiments.quantizer_study --help`` from the repository root.
"""
