"""medkd.train."""
