"""Layout files: the models, loading with located errors, the shipped layouts and their listing."""
