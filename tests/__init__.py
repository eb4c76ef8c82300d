"""Tests are a package, so that no folder here can stand in for a top-level package of the same name."""
