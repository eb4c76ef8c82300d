"""Every registered strategy passes the conformance kit shipped in purify.testing."""
from purify.testing.conformance import StrategyConformance


class TestAllStrategies(StrategyConformance):
    """strategy_names = None: every strategy the registry knows, built-ins and plugins."""
