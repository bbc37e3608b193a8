"""The pipeline runner's name for the product's command line: ``python -m etl.cli`` is ``sndw``."""
