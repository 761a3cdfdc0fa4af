"""Rules from configuration: validation now, transformations next."""
