"""Converters of other libraries' trained FCOS into fcosdet model files."""
