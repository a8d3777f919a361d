"""medledger benchmarks: each prints its figures and a ratio against a baseline measured
in the same run, on the same servers. Not tests: nothing here asserts a timing."""
