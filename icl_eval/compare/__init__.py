"""`icl-eval compare`: tables, scaling plots and a one-file HTML report from many run results."""
