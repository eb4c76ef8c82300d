"""Test helpers shipped with purify: tiny models and the strategy conformance kit."""
