"""``python -m experiments.quantizer_study``: the study's one command (see study.py)."""

from experiments.quantizer_study.study import main

raise SystemExit(main())
