"""`icl-eval compare`: tables, scaling plots and a one-file HTML report from many run results."""

FORMATS = ("md", "csv", "html", "latex")  # the table formats `icl-eval compare --format` writes
