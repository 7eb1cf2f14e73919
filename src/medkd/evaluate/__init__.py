"""medkd.evaluate."""
