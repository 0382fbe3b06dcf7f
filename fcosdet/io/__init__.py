"""Model files: the one reader / writer of fcosdet files, published weights, and importers of other libraries' FCOS."""
