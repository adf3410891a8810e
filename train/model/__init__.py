"""The network: encoder families (families), loading and rebuilding from an adapter (load), what trains and
the budget (plan), where and how fast it runs (device), the frozen-prefix cache and the two nets a step
calls (prefix), and class probabilities over encoded data (inference)."""
