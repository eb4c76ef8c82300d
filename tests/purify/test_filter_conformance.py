"""Every registered filter passes the conformance kit shipped in purify.testing."""
from purify.testing.filter_conformance import FilterConformance


class TestAllFilters(FilterConformance):
    """filter_names = None: every filter the registry knows, built-ins and plugins."""
