"""``python -m dmp_ml.cli``: the ``dmp-ml`` command."""

from dmp_ml.cli import main

main()
