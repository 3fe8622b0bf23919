"""Reading runs back: summaries, config differences, comparisons, expectations and claims. pandas and numpy, never torch."""
