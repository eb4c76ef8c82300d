"""Backdoor zoo: real text datasets, text-level backdoor attacks and the builders that combine them."""
