"""medkd.report."""
