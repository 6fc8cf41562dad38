"""What the tests share: records written as jobs write them, job arguments, small datasets.
Imported as ``helpers.<module>`` (tests/ is on ``sys.path`` under pytest); never another test file."""
