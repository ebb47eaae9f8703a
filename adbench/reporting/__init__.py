"""The reporting layer: tables, figures, published-number comparisons, efficiency and
confidence intervals, made from stored records alone (never from the run that made them).
It imports only the core, evaluation and results layers."""
