"""Reusable contract suites (Haystack-style mixins): every implementation of a Protocol subclasses the
suite and provides its fixtures, so a new recall branch or ranker gets the whole contract by one class."""
